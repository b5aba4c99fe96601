//! A real RTSP server serving a clip (looped, H.264) on 127.0.0.1, for trying a setup without a
//! camera (`facestream serve-rtsp`), the reliability tests and the soak harness.

use std::path::Path;

use gstreamer::glib;
use gstreamer_rtsp_server::prelude::*;
use gstreamer_rtsp_server::{RTSPMediaFactory, RTSPServer};

use super::IngestError;
use super::config::percent_encode_path;

/// A running server on its own GLib main loop.
pub struct RtspServer {
    main_loop: glib::MainLoop,
    thread: Option<std::thread::JoinHandle<()>>,
    pub port: u16,
    pub url: String,
}

impl RtspServer {
    /// Serves `clip` at `rtsp://127.0.0.1:<port><mount>` (port 0: any free port), looping it.
    pub fn start(clip: &Path, port: u16, mount: &str) -> Result<Self, IngestError> {
        super::init()?;
        let err = |reason: String| IngestError::Stream { camera: format!("rtsp server for {}", clip.display()), reason };
        let abs = std::fs::canonicalize(clip).map_err(|e| err(e.to_string()))?;
        let uri = format!("file://{}", percent_encode_path(&abs.to_string_lossy()));
        let url_mount = mount.to_string();
        let mount = mount.to_string();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("rtsp-server".into())
            .spawn(move || {
                let ctx = glib::MainContext::new();
                let main_loop = glib::MainLoop::new(Some(&ctx), false);
                let started = ctx.with_thread_default(|| {
                    let server = RTSPServer::new();
                    server.set_address("127.0.0.1");
                    server.set_service(&port.to_string());
                    let factory = RTSPMediaFactory::new();
                    // Shared: every client sees the same stream; a new one joins it.
                    factory.set_shared(true);
                    factory.set_launch(&format!(
                        "( uridecodebin uri=\"{uri}\" ! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 ! rtph264pay name=pay0 pt=96 )"
                    ));
                    let Some(points) = server.mount_points() else { return Err("no mount points".to_string()) };
                    points.add_factory(&mount, factory);
                    let source = server.attach(Some(&ctx)).map_err(|e| e.to_string())?;
                    let _ = tx.send(Ok((main_loop.clone(), server.bound_port() as u16)));
                    main_loop.run();
                    server.client_filter(Some(&mut |_, _| gstreamer_rtsp_server::RTSPFilterResult::Remove));
                    if let Some(s) = ctx.find_source_by_id(&source) {
                        s.destroy();
                    }
                    Ok(())
                });
                if let Ok(Err(e)) | Err(e) = started.map_err(|e| e.to_string()) {
                    let _ = tx.send(Err(e));
                }
            })
            .map_err(|e| err(e.to_string()))?;
        let (main_loop, port) = rx.recv().map_err(|e| err(e.to_string()))?.map_err(err)?;
        let url = format!("rtsp://127.0.0.1:{port}{url_mount}");
        Ok(Self { main_loop, thread: Some(thread), port, url })
    }

    pub fn stop(mut self) {
        self.main_loop.quit();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
