//! What the event loop does for the operator: answer control requests (`show`, `reload`) and
//! SIGHUP. The loop owns the core; this holds what the answers need besides it.

use tokio::sync::mpsc;
use upmt_proto::anchor::Anchor;
use upmt_proto::time::Instant;

use crate::config::Config;
use crate::control::{ControlRequest, ReloadConfig, ReloadReport, Request, Response, Show};
use crate::reload::Reloader;
use crate::show;

/// The operator's side of the event loop.
#[derive(Debug)]
pub struct Ops {
    requests: Option<mpsc::Receiver<ControlRequest>>,
    reloader: Reloader,
    base: Show,
}

impl Ops {
    /// For a daemon started with `config`; `requests` come from the control server (`None`:
    /// no control socket, SIGHUP only).
    pub fn new(config: &Config, requests: Option<mpsc::Receiver<ControlRequest>>) -> Ops {
        Ops {
            requests,
            reloader: Reloader::new(config),
            base: Show {
                public_key: config.private_key.public_key().to_string(),
                listen: config.listen.to_string(),
                tun: config.tun.clone(),
                config: config.path.display().to_string(),
                peers: Vec::new(),
            },
        }
    }

    /// The next control request; pending forever once the server is gone.
    pub async fn next_request(&mut self) -> ControlRequest {
        match &mut self.requests {
            Some(rx) => match rx.recv().await {
                Some(req) => req,
                None => {
                    self.requests = None;
                    std::future::pending().await
                }
            },
            None => std::future::pending().await,
        }
    }

    /// Answers one request.
    pub fn answer(&self, anchor: &mut Anchor, request: Request, now: Instant) -> Response {
        match request {
            Request::Show => Response::Show(show::snapshot(&self.base, anchor.peers(), now)),
            Request::Reload { config } => match self.apply(anchor, &config, "upmt-an reload") {
                Ok(report) => Response::Reloaded(report),
                Err(message) => Response::error(message),
            },
        }
    }

    /// SIGHUP: re-reads the config file; a bad one is logged and changes nothing.
    pub fn hup(&self, anchor: &mut Anchor) {
        let path = self.reloader.path().display().to_string();
        match self.reloader.read() {
            Ok(config) => {
                if let Err(message) = self.apply(anchor, &config, "SIGHUP") {
                    tracing::error!(config = %path, %message, "SIGHUP: reload refused; the old peers stay");
                }
            }
            Err(e) => tracing::error!(
                config = %path,
                error = %upmt_sys::display_chain(&e),
                "SIGHUP: cannot reload; the old config stays (when the daemon's user cannot read the file, run `upmt-an reload` as root)"
            ),
        }
    }

    fn apply(
        &self,
        anchor: &mut Anchor,
        config: &ReloadConfig,
        by: &'static str,
    ) -> Result<ReloadReport, String> {
        let report = self.reloader.apply(anchor, config)?;
        tracing::info!(
            by,
            added = ?report.added,
            removed = ?report.removed,
            unchanged = report.unchanged,
            "peers reloaded"
        );
        if !report.needs_restart.is_empty() {
            tracing::warn!(
                settings = ?report.needs_restart,
                "reload: these settings changed but need a restart; not applied"
            );
        }
        Ok(report)
    }
}
