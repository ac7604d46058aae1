//! What a program printed, read while it runs and capped: a program that floods its output
//! gets its output cut, never a harness that blocks on a full pipe or runs out of memory.

use std::io::Read;
use std::sync::{Arc, Mutex};

/// One output stream of a run: its first and last `cap` bytes, and how many there were.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    head: Vec<u8>,
    tail: Vec<u8>,
    total: u64,
    cap: usize,
}

impl Captured {
    pub(crate) fn new(cap: usize) -> Self {
        Captured { cap: cap.max(1), ..Default::default() }
    }

    fn push(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let room = self.cap - self.head.len().min(self.cap);
        let (h, rest) = bytes.split_at(room.min(bytes.len()));
        self.head.extend_from_slice(h);
        bytes = rest;
        if bytes.is_empty() {
            return;
        }
        self.tail.extend_from_slice(bytes);
        // Amortised: drop the front only once the tail holds twice what it keeps.
        if self.tail.len() > 2 * self.cap {
            let cut = self.tail.len() - self.cap;
            self.tail.drain(..cut);
        }
    }

    /// Bytes the program wrote to this stream, kept or not.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Whether bytes were dropped between the kept head and tail.
    pub fn truncated(&self) -> bool {
        self.total > (self.head.len() + self.tail.len().min(self.cap)) as u64
    }

    /// The kept text (lossy UTF-8), with a marker where bytes were dropped.
    pub fn text(&self) -> String {
        let tail = &self.tail[self.tail.len().saturating_sub(self.cap)..];
        let mut s = String::from_utf8_lossy(&self.head).into_owned();
        if self.truncated() {
            let dropped = self.total - (self.head.len() + tail.len()) as u64;
            s.push_str(&format!("\n[… {dropped} bytes not kept …]\n"));
        }
        s.push_str(&String::from_utf8_lossy(tail));
        s
    }

    /// The kept bytes, head then tail (all of them when nothing was dropped).
    pub(crate) fn bytes(&self) -> Vec<u8> {
        [&self.head[..], &self.tail[self.tail.len().saturating_sub(self.cap)..]].concat()
    }

    /// The last line that is not blank (where Python puts the exception).
    pub fn last_line(&self) -> Option<String> {
        self.text().lines().rev().find(|l| !l.trim().is_empty()).map(|l| l.trim_end().to_string())
    }
}

/// Reads `stream` to its end on a thread of its own, into a shared, capped buffer that the
/// caller can look at whenever it likes (also while the thread still reads).
pub(crate) fn spawn_reader(mut stream: impl Read + Send + 'static, cap: usize) -> (Arc<Mutex<Captured>>, std::thread::JoinHandle<()>) {
    let shared = Arc::new(Mutex::new(Captured::new(cap)));
    let sink = Arc::clone(&shared);
    let handle = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => sink.lock().unwrap_or_else(|e| e.into_inner()).push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    });
    (shared, handle)
}

#[cfg(test)]
mod tests {
    use super::Captured;

    #[test]
    fn keeps_head_and_tail_and_counts_the_rest() {
        let mut c = Captured::new(4);
        c.push(b"ab");
        assert_eq!((c.text().as_str(), c.truncated()), ("ab", false));
        c.push(b"cdef");
        assert_eq!((c.text().as_str(), c.truncated()), ("abcdef", false));
        for _ in 0..100 {
            c.push(b"xyz");
        }
        c.push(b"\nlast\n");
        assert_eq!(c.total_bytes(), 6 + 300 + 6);
        assert!(c.truncated());
        let t = c.text();
        assert!(t.starts_with("abcd"), "{t}");
        assert!(t.ends_with("ast\n"), "{t}");
        assert!(t.contains("bytes not kept"), "{t}");
        assert_eq!(c.last_line().as_deref(), Some("ast"));
    }
}
