//! The web UI in a real headless Chromium (Debian `chromium` + `chromium-driver`, driven over
//! WebDriver): the demo clip plays as a door camera with a gate; the login, the live tile with
//! MEDS_S029's box, enrolling a fixture photo on the gallery page, the timeline's detail, the
//! gate's decisions, a phone-sized window and the dark theme. Screenshots of every page go to
//! `target/ui-screenshots/`. Without a session the pages redirect to the login and the API
//! refuses; a session's changes need its CSRF token.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use facestream::app::{self, App, AppOptions};
use facestream::config::Config;
use fantoccini::{Client, ClientBuilder, Locator};

const TOKEN: &str = "ui-test-token-1";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn config(store: &Path) -> Config {
    let text = format!(
        r#"[events]
stdout = false
camera_states = false
[http]
bind = "127.0.0.1:0"
token = "{TOKEN}"
live_fps = 4.0
[gallery]
store = "{}"
[[gallery.people]]
name = "MEDS_S029"
images = ["tests/fixtures/meds-aa-S029-01.jpg"]
groups = ["staff"]
[snapshots]
enabled = true
[visitors]
enabled = true
[[cameras]]
id = "door"
url = "tests/fixtures/ff-region-face-motion.avi"
max_fps = 10.0
realtime = true
loop = true
[[gates]]
id = "front-door"
camera = "door"
allow_groups = ["staff"]
cooldown_s = 2.0
"#,
        store.display()
    );
    let mut cfg = Config::parse(&text, Path::new("ui.toml")).unwrap();
    cfg.base_dir = root();
    cfg.validate_for_run(Path::new("ui.toml")).unwrap();
    cfg
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into()
}

/// chromedriver on a free port, up and answering.
fn chromedriver() -> (common::Proc, String) {
    let port = common::free_port();
    let child = Command::new(common::find_program("chromedriver"))
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let proc = common::Proc(child);
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent().get(&format!("{url}/status")).call().is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not answer on {url}");
        std::thread::sleep(Duration::from_millis(100));
    }
    (proc, url)
}

async fn browser(driver: &str) -> Client {
    let caps = serde_json::json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": common::find_program("chromium").display().to_string(),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900", "--no-first-run", "--disable-extensions", "--disable-background-networking"],
        }
    });
    let caps = caps.as_object().unwrap().clone();
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new()).capabilities(caps).connect(driver).await.expect("a Chromium session")
}

async fn shot(c: &Client, name: &str) {
    let dir = root().join("target/ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// Polls `script` (JavaScript returning a value) until `ok` holds for it, or panics with `what`.
async fn wait_js(c: &Client, script: &str, what: &str, limit: Duration, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let v = c.execute(script, vec![]).await.unwrap();
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: still {v} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn browser_login_live_view_gallery_timeline_gates() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir.path().join("gallery.db"));
    let (_driver, driver_url) = chromedriver();
    let app = App::start(&cfg, app::load_gallery(&cfg).unwrap(), AppOptions { http: true, ..AppOptions::default() }).unwrap();
    let base = format!("http://{}", app.server.as_ref().unwrap().addr);

    // Without a session: the API refuses, the pages go to the login.
    let r = agent().get(&format!("{base}/api/persons")).call().unwrap();
    assert_eq!(r.status(), 401);
    let r = agent().get(&format!("{base}/ui/")).call().unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers().get("location").unwrap(), "/ui/login");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let c = browser(&driver_url).await;
        c.goto(&format!("{base}/ui/")).await.unwrap();
        assert!(c.current_url().await.unwrap().path().starts_with("/ui/login"), "the page redirects to the login");
        // A wrong token is refused with a message, the right one logs in.
        c.find(Locator::Css("#token")).await.unwrap().send_keys("not-the-token").await.unwrap();
        c.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
        wait_js(&c, "const e = document.querySelector('.error'); return e ? e.textContent : ''", "the login's refusal", Duration::from_secs(10), |v| {
            v.as_str().is_some_and(|s| s.contains("Wrong token"))
        })
        .await;
        shot(&c, "login").await;
        c.find(Locator::Css("#token")).await.unwrap().send_keys(TOKEN).await.unwrap();
        c.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
        c.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css("#page-live")).await.unwrap();
        assert_eq!(c.current_url().await.unwrap().path(), "/ui/");

        // The session cookie is HttpOnly (scripts cannot read it).
        let visible = c.execute("return document.cookie", vec![]).await.unwrap();
        assert!(!visible.as_str().unwrap_or("").contains("fs_session"), "the session cookie is not visible to scripts: {visible}");
        let session = c.get_named_cookie("fs_session").await.unwrap();
        assert_eq!(session.http_only(), Some(true));
        assert_eq!(format!("{:?}", session.same_site()), "Some(Strict)");

        // The live tile shows a box labelled MEDS_S029 within a few seconds.
        let shown = Instant::now();
        let label = wait_js(
            &c,
            "const s = [...document.querySelectorAll('.tile[data-camera=door] .box.known span')].map(e => e.textContent); return s.join(',');",
            "a known box on the door tile",
            Duration::from_secs(30),
            |v| v.as_str().is_some_and(|s| !s.is_empty()),
        )
        .await;
        assert_eq!(label.as_str().unwrap(), "MEDS_S029");
        eprintln!("MEDS_S029's box labelled {:.1} s after the page loaded", shown.elapsed().as_secs_f64());
        let width = wait_js(&c, "const i = document.querySelector('.tile[data-camera=door] img'); return i.complete ? i.naturalWidth : 0", "a frame on the tile", Duration::from_secs(10), |v| {
            v.as_u64().unwrap_or(0) > 0
        })
        .await;
        assert!(width.as_u64().unwrap() <= 640, "frames at most http.live_width wide: {width}");
        let caption = c.find(Locator::Css(".tile[data-camera=door] figcaption")).await.unwrap().text().await.unwrap();
        assert!(caption.contains("streaming") && caption.contains("fps"), "camera state and fps on the tile: {caption}");
        shot(&c, "live").await;

        // A session's change without its CSRF token is refused; with it, it goes through.
        let cookie = format!("fs_session={}", session.value());
        let r = agent().post(&format!("{base}/api/persons")).header("cookie", &cookie).send(br#"{"name":"csrf-probe"}"#.as_slice()).unwrap();
        assert_eq!(r.status(), 403, "no CSRF token");
        let token = c.execute("return document.querySelector('meta[name=csrf-token]').content", vec![]).await.unwrap();
        let r = agent()
            .delete(&format!("{base}/api/persons/999999"))
            .header("cookie", &cookie)
            .header("x-csrf-token", token.as_str().unwrap())
            .call()
            .unwrap();
        assert_eq!(r.status(), 404, "with the CSRF token the request reaches the API (no such person)");

        // Gallery: upload a fixture photo; the person appears in the list with a face thumbnail.
        c.goto(&format!("{base}/ui/#gallery")).await.unwrap();
        c.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css("#enroll-name")).await.unwrap().send_keys("Paul_Rudd").await.unwrap();
        let photo = root().join("tests/fixtures/Paul.jpeg");
        c.find(Locator::Css("#enroll-files")).await.unwrap().send_keys(&photo.display().to_string()).await.unwrap();
        c.find(Locator::Css("#enroll button[type=submit]")).await.unwrap().click().await.unwrap();
        let result = wait_js(&c, "return document.querySelector('#enroll-result').textContent", "the enrollment's result", Duration::from_secs(60), |v| {
            v.as_str().is_some_and(|s| s.contains("photo(s) enrolled") || s.contains("not enrolled"))
        })
        .await;
        assert!(result.as_str().unwrap().contains("1 of 1 photo(s) enrolled"), "{result}");
        let thumb = wait_js(
            &c,
            "const i = document.querySelector('.person[data-person=Paul_Rudd] img.thumb'); return i && i.complete ? i.naturalWidth : 0",
            "Paul_Rudd listed with a face thumbnail",
            Duration::from_secs(10),
            |v| v.as_u64().unwrap_or(0) > 0,
        )
        .await;
        assert_eq!(thumb.as_u64(), Some(150), "the aligned crop");
        shot(&c, "gallery").await;
        let r = agent().get(&format!("{base}/api/persons")).header("authorization", &format!("Bearer {TOKEN}")).call().unwrap().body_mut().read_to_string().unwrap();
        assert!(r.contains("\"Paul_Rudd\""), "enrolled in the store: {r}");
        // A photo with no face gets the enrollment check's message.
        c.find(Locator::Css("#enroll-name")).await.unwrap().send_keys("Nobody").await.unwrap();
        let noface = dir.path().join("grey.png");
        image::RgbImage::from_pixel(200, 200, image::Rgb([128, 128, 128])).save(&noface).unwrap();
        c.find(Locator::Css("#enroll-files")).await.unwrap().send_keys(&noface.display().to_string()).await.unwrap();
        c.find(Locator::Css("#enroll button[type=submit]")).await.unwrap().click().await.unwrap();
        let result = wait_js(&c, "return document.querySelector('#enroll-result').textContent", "the refusal", Duration::from_secs(30), |v| v.as_str().is_some_and(|s| s.contains("not enrolled"))).await;
        assert!(result.as_str().unwrap().contains("no face found"), "{result}");
        let persons = c.execute("return [...document.querySelectorAll('.person')].map(e => e.dataset.person).join(',')", vec![]).await.unwrap();
        assert_eq!(persons.as_str(), Some("Paul_Rudd"), "no empty person is left behind");

        // Timeline: MEDS_S029's identification, and its detail with the distance.
        c.goto(&format!("{base}/ui/#timeline")).await.unwrap();
        wait_js(&c, "return [...document.querySelectorAll('#events .what.known')].map(e => e.textContent).join(',')", "an identified event", Duration::from_secs(20), |v| {
            v.as_str().is_some_and(|s| s.contains("MEDS_S029"))
        })
        .await;
        c.find(Locator::Css("#events .what.known")).await.unwrap().click().await.unwrap();
        let detail = c.wait().at_most(Duration::from_secs(5)).for_element(Locator::Css("#detail[open] dl")).await.unwrap().text().await.unwrap();
        assert!(detail.contains("Distance") && detail.contains("Threshold") && detail.contains("Votes"), "detail: {detail}");
        shot(&c, "timeline").await;

        // Gates: the door's decisions with their latency.
        c.goto(&format!("{base}/ui/#gates")).await.unwrap();
        let gates = wait_js(&c, "return document.querySelector('#gates').textContent", "a granted decision for MEDS_S029", Duration::from_secs(30), |v| {
            v.as_str().is_some_and(|s| s.contains("granted") && s.contains("MEDS_S029"))
        })
        .await;
        assert!(gates.as_str().unwrap().contains(" ms"), "latency shown: {gates}");
        shot(&c, "gates").await;
        c.goto(&format!("{base}/ui/#visitors")).await.unwrap();
        c.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css("#visitors li")).await.unwrap();
        shot(&c, "visitors").await;

        // A phone-sized window: nothing wider than the screen; dark theme by the toggle.
        c.set_window_size(390, 844).await.unwrap();
        c.goto(&format!("{base}/ui/#live")).await.unwrap();
        wait_js(&c, "return document.querySelectorAll('.tile').length", "the tile on a phone", Duration::from_secs(10), |v| v.as_u64() == Some(1)).await;
        let overflow = c.execute("return document.documentElement.scrollWidth - window.innerWidth", vec![]).await.unwrap();
        assert!(overflow.as_i64().unwrap_or(1) <= 0, "horizontal overflow of {overflow} px on a phone");
        tokio::time::sleep(Duration::from_millis(600)).await;
        shot(&c, "live-phone").await;
        // (headless Chromium's hit test lags a window resize: the button is clicked from script)
        c.execute("document.querySelector('#theme').click()", vec![]).await.unwrap();
        let theme = c.execute("return document.documentElement.dataset.theme", vec![]).await.unwrap();
        assert!(theme.as_str().is_some_and(|t| t == "dark" || t == "light"), "theme toggled: {theme}");
        tokio::time::sleep(Duration::from_millis(600)).await;
        shot(&c, "live-phone-theme").await;

        // Logging out ends the session.
        c.execute("document.querySelector('#logout').click()", vec![]).await.unwrap();
        c.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css("#token")).await.unwrap();
        let r = agent().get(&format!("{base}/api/persons")).header("cookie", &cookie).call().unwrap();
        assert_eq!(r.status(), 401, "the old session no longer works");
        c.close().await.unwrap();
    });
    app.running.stop();
    app.finish();
}

/// The login over plain HTTP: the form's CSRF cookie is required, a wrong token is refused, the
/// session cookie's flags, the assets' security headers, and no UI at all with `http.ui = false`.
#[test]
fn login_form_session_cookie_and_headers() {
    use facestream::http::{self, AppState, HttpConfig};
    let gallery = std::sync::Arc::new(std::sync::RwLock::new(facestream::gallery::Gallery::new()));
    let cfg = HttpConfig { bind: "127.0.0.1:0".into(), token: Some(TOKEN.into()), ..HttpConfig::default() };
    let state = AppState::new(gallery.clone(), 8).configured(&cfg, Default::default());
    let server = http::serve(&cfg, state, None).unwrap();
    let base = format!("http://{}", server.addr);
    let form = |csrf: &str, token: &str| format!("csrf={csrf}&token={token}");

    let mut page = agent().get(&format!("{base}/ui/login")).call().unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers().get("content-security-policy").unwrap().to_str().unwrap().to_string();
    assert!(csp.contains("default-src 'self'") && csp.contains("script-src 'self'"), "{csp}");
    let set = page.headers().get("set-cookie").unwrap().to_str().unwrap().to_string();
    let login_cookie = set.split(';').next().unwrap().to_string();
    let nonce = login_cookie.split_once('=').unwrap().1.to_string();
    let html = page.body_mut().read_to_string().unwrap();
    assert!(html.contains(&format!("value=\"{nonce}\"")), "the form carries the cookie's CSRF token");

    let post = |cookie: Option<&str>, body: String| {
        let mut r = agent().post(&format!("{base}/ui/login")).header("content-type", "application/x-www-form-urlencoded");
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        r.send(body.as_bytes()).unwrap()
    };
    assert_eq!(post(None, form(&nonce, TOKEN)).status(), 403, "a form posted without its cookie (from another site) is refused");
    assert_eq!(post(Some(&login_cookie), form("forged", TOKEN)).status(), 403, "a forged CSRF token is refused");
    assert_eq!(post(Some(&login_cookie), form(&nonce, "wrong-token")).status(), 401, "a wrong token is refused");
    let ok = post(Some(&login_cookie), form(&nonce, TOKEN));
    assert_eq!(ok.status(), 303);
    let session = ok
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("fs_session="))
        .expect("a session cookie");
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Strict") && session.contains("Path=/"), "{session}");
    let cookie = session.split(';').next().unwrap().to_string();
    let mut r = agent().get(&format!("{base}/ui/")).header("cookie", &cookie).call().unwrap();
    assert_eq!(r.status(), 200, "the session opens the page");
    assert_eq!(r.headers().get("x-frame-options").unwrap(), "DENY");
    let html = r.body_mut().read_to_string().unwrap();
    assert!(html.contains("name=\"csrf-token\" content=\"") && !html.contains("content=\"\""), "the page carries the session's CSRF token");
    let r = agent().get(&format!("{base}/api/cameras")).header("cookie", &cookie).call().unwrap();
    assert_eq!(r.status(), 200, "the session reads the API");
    let r = agent().get(&format!("{base}/ui/assets/app.js")).call().unwrap();
    assert_eq!((r.status().as_u16(), r.headers().get("content-type").unwrap().to_str().unwrap()), (200, "text/javascript; charset=utf-8"), "assets need no login");
    server.shutdown();

    // http.ui = false: no pages, the API as before.
    let cfg = HttpConfig { bind: "127.0.0.1:0".into(), ui: false, ..HttpConfig::default() };
    let server = http::serve(&cfg, AppState::new(gallery, 8).configured(&cfg, Default::default()), None).unwrap();
    let base = format!("http://{}", server.addr);
    assert_eq!(agent().get(&format!("{base}/ui/")).call().unwrap().status(), 404);
    assert_eq!(agent().get(&format!("{base}/api/cameras")).call().unwrap().status(), 200);
    server.shutdown();
}

/// The visitors page: signer B of book.mkv (an empty gallery) becomes a visitor; "Who is this?"
/// in the browser names her, and she is then a person of the gallery page with her faces.
#[test]
fn browser_names_an_unknown_visitor() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[events]\nstdout = false\ncamera_states = false\n[http]\nbind = \"127.0.0.1:0\"\n[gallery]\nstore = \"{}\"\n[snapshots]\nenabled = true\n[visitors]\nenabled = true\n[[cameras]]\nid = \"book\"\nurl = \"tests/fixtures/signs/book.mkv\"\n",
        dir.path().join("gallery.db").display()
    );
    let mut cfg = Config::parse(&text, Path::new("ui.toml")).unwrap();
    cfg.base_dir = root();
    cfg.validate_for_run(Path::new("ui.toml")).unwrap();
    let (_driver, driver_url) = chromedriver();
    let app = App::start(&cfg, app::load_gallery(&cfg).unwrap(), AppOptions { http: true, ..AppOptions::default() }).unwrap();
    let base = format!("http://{}", app.server.as_ref().unwrap().addr);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !app.running.is_finished() {
        assert!(Instant::now() < deadline, "the clip did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let c = browser(&driver_url).await;
        c.goto(&format!("{base}/ui/#visitors")).await.unwrap();
        let cards = wait_js(&c, "return [...document.querySelectorAll('#visitors li[data-visitor]')].map(e => e.dataset.visitor).join(',')", "a visitor card", Duration::from_secs(15), |v| {
            v.as_str().is_some_and(|s| !s.is_empty())
        })
        .await;
        assert_eq!(cards.as_str(), Some("visitor-1"), "signer B is one visitor");
        wait_js(&c, "const i = document.querySelector('#visitors li img'); return i && i.complete ? i.naturalWidth : 0", "the visitor's best face", Duration::from_secs(10), |v| v.as_u64().unwrap_or(0) > 0).await;
        shot(&c, "visitors-unknown").await;
        c.find(Locator::Css("#visitors li[data-visitor=visitor-1] button")).await.unwrap().click().await.unwrap();
        c.send_alert_text("Signer B").await.unwrap();
        c.accept_alert().await.unwrap();
        wait_js(&c, "return document.querySelector('#status').textContent", "the naming's confirmation", Duration::from_secs(20), |v| v.as_str().is_some_and(|s| s.contains("visitor-1 is Signer B"))).await;
        c.goto(&format!("{base}/ui/#gallery")).await.unwrap();
        let faces = wait_js(&c, "const p = document.querySelector('.person[data-person=\"Signer B\"] .meta'); return p ? p.textContent : ''", "Signer B in the gallery", Duration::from_secs(10), |v| {
            v.as_str().is_some_and(|s| s.contains("face"))
        })
        .await;
        let n: usize = faces.as_str().unwrap().split_whitespace().next().unwrap().parse().unwrap();
        assert!(n >= 1, "her best faces were enrolled: {faces}");
        c.close().await.unwrap();
    });
    app.finish();
}
