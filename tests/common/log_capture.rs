#![allow(dead_code)]
//! The events this test process writes, captured as JSON lines in the binary's
//! `--log-format json` layout (fields flattened into the event), for tests that read the audit
//! log of a service started in process.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

/// Installs the capturing subscriber (once per test process) and gives its buffer. Call it
/// before starting the service: events written earlier are not captured.
pub fn captured_events() -> &'static Arc<Mutex<Vec<u8>>> {
    static CAPTURE: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || CaptureWriter(sink.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buffer
    })
}

/// Everything captured so far.
pub fn captured_text() -> String {
    String::from_utf8_lossy(&captured_events().lock().unwrap_or_else(|p| p.into_inner()))
        .into_owned()
}

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
