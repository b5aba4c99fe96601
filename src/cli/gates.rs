//! `facestream gates log` (the audit log) and `facestream gate-receiver` (the reference receiver
//! of signed gate commands: verifies signature, timestamp and nonce, then prints or runs).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Args;

use facestream::config::Config;
use facestream::gate::audit::AuditLog;
use facestream::gate::signing::Verifier;

#[derive(Args)]
pub struct LogArgs {
    /// Only this gate's decisions.
    #[arg(long)]
    pub gate: Option<String>,
    /// Only decisions at or after this time: RFC 3339 (2026-12-01T08:00:00Z) or an age (`2h`, `7days`).
    #[arg(long)]
    pub since: Option<String>,
    /// Most decisions printed (newest first).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// `table` or `json` (one object per line).
    #[arg(long, value_parser = ["table", "json"], default_value = "table")]
    pub format: String,
    /// Gallery store holding the log (default: gallery.store of the config).
    #[arg(long)]
    pub store: Option<PathBuf>,
}

/// A time from `--since`: RFC 3339, or an age before now.
pub fn parse_since(s: &str) -> Result<SystemTime> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    match humantime::parse_duration(s) {
        Ok(d) => Ok(SystemTime::now() - d),
        Err(_) => bail!("--since `{s}`: give an RFC 3339 time (2026-12-01T08:00:00Z) or an age (30min, 2h, 7days)"),
    }
}

pub fn cmd_log(cfg: &Config, a: LogArgs) -> Result<ExitCode> {
    // `--store` names a SQLite file; else the config's store (its file, or the cluster's database).
    let spec = match a.store {
        Some(path) => facestream::gallery::store::StoreSpec::sqlite(path),
        None => cfg.store_spec(),
    };
    if spec.database.is_none() && !spec.path.is_file() {
        bail!("{}: no gallery store here, so no gate log (set gallery.store in the config or pass --store)", spec.path.display());
    }
    let since = a.since.as_deref().map(parse_since).transpose()?;
    if let Some(g) = &a.gate
        && !cfg.gates.is_empty() && !cfg.gates.iter().any(|x| &x.id == g) {
            eprintln!("note: gate `{g}` is not in this config (known: {})", cfg.gates.iter().map(|x| x.id.as_str()).collect::<Vec<_>>().join(", "));
        }
    let log = AuditLog::open_spec(&spec)?;
    let entries = log.entries(a.gate.as_deref(), since, a.limit)?;
    let mut out = std::io::stdout().lock();
    if a.format == "json" {
        for e in &entries {
            writeln!(out, "{}", serde_json::to_string(e)?)?;
        }
    } else {
        writeln!(out, "{:<6} {:<24} {:<14} {:<8} {:<12} {:<20} {:>8}  track", "id", "time", "gate", "outcome", "reason", "person", "latency")?;
        for e in &entries {
            writeln!(
                out,
                "{:<6} {:<24} {:<14} {:<8} {:<12} {:<20} {:>6.0}ms  {}",
                e.id,
                e.time,
                e.gate,
                e.outcome,
                e.reason.as_deref().unwrap_or("-"),
                e.person.as_deref().unwrap_or("-"),
                e.latency_s * 1000.0,
                e.track_id
            )?;
        }
        eprintln!("{} decision(s) from {}", entries.len(), spec.database.as_deref().map_or_else(|| spec.path.display().to_string(), facestream::gallery::postgres::redact));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct ReceiverArgs {
    /// File whose first line is the gate's HMAC key (the gate's `secret_file`).
    #[arg(long)]
    pub secret_file: PathBuf,
    /// Accept only commands for this gate id.
    #[arg(long)]
    pub gate: Option<String>,
    /// Largest difference in seconds between the command's timestamp and this clock.
    #[arg(long, default_value_t = 30)]
    pub max_skew: i64,
    /// Subscribe to this MQTT broker (HOST:PORT) ...
    #[arg(long, conflicts_with_all = ["listen", "stdin"])]
    pub mqtt: Option<String>,
    /// ... on this topic (default facestream/gates/<gate>/command, or facestream/gates/+/command).
    #[arg(long)]
    pub topic: Option<String>,
    /// Or listen for webhook POSTs on this address (e.g. 127.0.0.1:9100).
    #[arg(long, conflicts_with = "stdin")]
    pub listen: Option<String>,
    /// Or read one message per line from standard input.
    #[arg(long)]
    pub stdin: bool,
    /// Run this command (through sh -c) for every accepted command, with its payload in
    /// $FACESTREAM_COMMAND (e.g. the relay driver of the door).
    #[arg(long)]
    pub exec: Option<String>,
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn read_key(path: &Path) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read the gate key", path.display()))?;
    let key = text.lines().next().unwrap_or("").trim().to_string();
    if key.len() < 16 {
        bail!("{}: the key must be at least 16 characters on the first line", path.display());
    }
    Ok(key.into_bytes())
}

/// Verifies one message, prints the verdict as a JSON line, runs `exec` for accepted ones;
/// true when accepted.
fn handle(v: &mut Verifier, msg: &[u8], exec: Option<&str>) -> bool {
    let verdict = v.verify(msg, now_unix());
    let line = match &verdict {
        Ok(env) => serde_json::json!({"accepted": true, "gate": env.gate, "ts": env.ts, "command": serde_json::from_str::<serde_json::Value>(&env.payload).unwrap_or(serde_json::Value::Null)}),
        Err(r) => serde_json::json!({"accepted": false, "reason": r.to_string()}),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    if let (Ok(env), Some(cmd)) = (&verdict, exec) {
        match std::process::Command::new("sh").arg("-c").arg(cmd).env("FACESTREAM_COMMAND", &env.payload).status() {
            Ok(s) if s.success() => {}
            Ok(s) => eprintln!("warning: --exec exited with {s}"),
            Err(e) => eprintln!("warning: --exec could not start: {e}"),
        }
    }
    verdict.is_ok()
}

pub fn cmd_receiver(a: ReceiverArgs) -> Result<ExitCode> {
    let key = read_key(&a.secret_file)?;
    let mut v = Verifier::new(&key, a.max_skew, a.gate.clone());
    let exec = a.exec.as_deref();
    if a.stdin {
        for line in std::io::stdin().lock().lines() {
            let line = line?;
            if !line.trim().is_empty() {
                handle(&mut v, line.as_bytes(), exec);
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(addr) = &a.mqtt {
        let (host, port) = addr.rsplit_once(':').with_context(|| format!("--mqtt `{addr}`: give HOST:PORT"))?;
        let port: u16 = port.parse().with_context(|| format!("--mqtt `{addr}`: bad port"))?;
        let topic = a.topic.clone().unwrap_or_else(|| format!("facestream/gates/{}/command", a.gate.as_deref().unwrap_or("+")));
        let mut opts = rumqttc::MqttOptions::new(format!("facestream-gate-receiver-{}", std::process::id()), host, port);
        opts.set_keep_alive(Duration::from_secs(15));
        let (client, mut conn) = rumqttc::Client::new(opts, 64);
        eprintln!("gate-receiver: waiting for commands on mqtt://{addr}/{topic}");
        for n in conn.iter() {
            match n {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    client.subscribe(topic.clone(), rumqttc::QoS::AtLeastOnce).context("MQTT subscribe")?;
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => eprintln!("gate-receiver: subscribed"),
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    handle(&mut v, &p.payload, exec);
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("gate-receiver: MQTT connection error: {e}; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(addr) = &a.listen {
        let listener = std::net::TcpListener::bind(addr).with_context(|| format!("--listen {addr}: cannot bind"))?;
        eprintln!("gate-receiver: waiting for webhook POSTs on http://{}", listener.local_addr()?);
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let (status, accepted) = match read_http_body(&mut s) {
                Some(body) => {
                    let ok = handle(&mut v, &body, exec);
                    (if ok { "200 OK" } else { "403 Forbidden" }, ok)
                }
                None => ("400 Bad Request", false),
            };
            let reply = if accepted { "accepted\n" } else { "refused\n" };
            let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}", reply.len());
        }
        return Ok(ExitCode::SUCCESS);
    }
    bail!("say where commands come from: --mqtt HOST:PORT, --listen ADDR or --stdin")
}

/// The body of one HTTP/1.1 request with a Content-Length (at most 64 KiB).
fn read_http_body(s: &mut std::net::TcpStream) -> Option<Vec<u8>> {
    let mut r = std::io::BufReader::new(s);
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            }
    }
    if len > 64 * 1024 {
        return None;
    }
    let mut body = vec![0u8; len];
    std::io::Read::read_exact(&mut r, &mut body).ok()?;
    Some(body)
}
