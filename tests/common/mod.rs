//! Test harness: start the real forkd binary on a port of its own choosing, read its log,
//! talk protocol v1 to it, inspect its descriptors and children, and clean up every process
//! a test started.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use forkd::Stream;
use forkd::addr::Addr;
use forkd::frame::{Frame, FrameReader, Kind, write_frame};

pub const FORKD: &str = env!("CARGO_BIN_EXE_forkd");
pub const FORKC: &str = env!("CARGO_BIN_EXE_forkc");

/// The path of an example program, built beside the tests by `cargo test` and nextest (or
/// here, when a filtered run did not build it).
pub fn example(name: &str) -> String {
    let exe = std::env::current_exe().expect("test binary path");
    // target/PROFILE/deps/TEST-HASH -> target/PROFILE/examples/NAME
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join("examples")
        .join(name);
    // A filtered run (`cargo test --test library`) builds no example, or leaves an old one:
    // build it here.
    if !path.exists() || older_than_sources(&path) {
        let release = path
            .parent()
            .and_then(Path::parent)
            .is_some_and(|p| p.ends_with("release"));
        let built = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--example", name])
            .args(release.then_some("--release"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo");
        assert!(built.success(), "cargo build --example {name}");
    }
    assert!(path.exists(), "{} is not built", path.display());
    path.to_string_lossy().into_owned()
}

/// Whether any file under src/ or examples/ changed after `built` was.
fn older_than_sources(built: &Path) -> bool {
    fn newest(dir: &Path) -> std::time::SystemTime {
        let mut latest = std::time::SystemTime::UNIX_EPOCH;
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let time = if path.is_dir() {
                newest(&path)
            } else {
                entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(latest)
            };
            latest = latest.max(time);
        }
        latest
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sources = newest(&root.join("src")).max(newest(&root.join("examples")));
    std::fs::metadata(built)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t < sources)
}

/// Long enough for a loaded 2-core machine, short enough that a hang fails the test.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A running forkd, killed with its children when dropped.
pub struct Forkd {
    child: Option<Child>,
    pub pid: i32,
    /// The addresses from the `start` line, as bound.
    pub addrs: Vec<String>,
    log: Arc<Mutex<Vec<String>>>,
    pub dir: tempfile::TempDir,
}

impl Forkd {
    /// Starts forkd logging to stderr. Without a `--listen` in `args` it listens on
    /// 127.0.0.1 at a port the kernel picks.
    pub fn start(args: &[&str]) -> Forkd {
        Forkd::start_binary(FORKD, args)
    }

    /// Starts the fault-injection server (examples/faults.rs), which takes forkd's flags.
    pub fn start_faults(args: &[&str]) -> Forkd {
        Forkd::start_binary(&example("faults"), args)
    }

    /// Starts `binary` (forkd, or an example that takes forkd's flags) as [`Forkd::start`].
    pub fn start_binary(binary: &str, args: &[&str]) -> Forkd {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut all: Vec<String> = vec!["--log".into(), "stderr".into()];
        if !args.contains(&"--listen") {
            all.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        all.extend(args.iter().map(|s| s.to_string()));
        Forkd::start_with(Command::new(binary).args(&all), dir)
    }

    /// Starts a prepared command (stderr is taken over) and waits for its `start` line.
    pub fn start_with(cmd: &mut Command, dir: tempfile::TempDir) -> Forkd {
        let mut forkd = Forkd::spawn(cmd, dir);
        let start = forkd.wait_log(" start version=");
        forkd.addrs = field(&start, "listen")
            .expect("listen= in start line")
            .split(',')
            .map(str::to_string)
            .collect();
        forkd
    }

    /// Starts forkd with a log level that hides the start line: it is up once `addr` answers.
    pub fn start_silent(args: &[&str], addr: &str) -> Forkd {
        Forkd::start_silent_binary(FORKD, args, addr)
    }

    /// [`Forkd::start_silent`] for another binary that takes forkd's flags.
    pub fn start_silent_binary(binary: &str, args: &[&str], addr: &str) -> Forkd {
        let mut cmd = Command::new(binary);
        cmd.args(["--log", "stderr", "--listen", addr]).args(args);
        Forkd::spawn_until_answering(&mut cmd, addr)
    }

    /// Starts a prepared command whose log goes elsewhere (syslog): it is up once `addr`
    /// answers a PING. That probe conversation is then finished and its child reaped, so the
    /// test starts with no child (the handler must answer PING: echo, fault, frame-exec).
    pub fn spawn_until_answering(cmd: &mut Command, addr: &str) -> Forkd {
        let mut forkd = Forkd::spawn(cmd, tempfile::tempdir().unwrap());
        forkd.addrs = vec![addr.to_string()];
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(stream) = forkd::client::connect(&forkd.addr(), PATIENCE) {
                let mut probe = Client::from_stream(stream);
                probe.send(Kind::Ping, b"up?");
                assert_eq!(probe.recv().kind, Kind::Pong, "{addr} answers PING");
                probe.half_close();
                probe.expect_eof();
                break;
            }
            assert!(Instant::now() < deadline, "forkd never answered on {addr}");
            std::thread::sleep(Duration::from_millis(10));
        }
        forkd.wait_no_children();
        forkd
    }

    pub fn spawn(cmd: &mut Command, dir: tempfile::TempDir) -> Forkd {
        // Whatever the test runner leaked to us stays out of forkd, so descriptor checks can
        // be exact. close() is async-signal-safe, as pre_exec requires.
        unsafe {
            cmd.pre_exec(|| {
                for fd in 3..1024 {
                    libc::close(fd);
                }
                Ok(())
            });
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn forkd");
        let pid = child.id() as i32;
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        // Room for a busy test's whole log: forkd drops a line rather than wait for its reader
        // (`status log_dropped=N`), and on a loaded machine this thread can fall behind.
        // SAFETY: fcntl on the pipe's read end, which `stderr` owns.
        unsafe {
            libc::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&stderr),
                libc::F_SETPIPE_SZ,
                1 << 20,
            )
        };
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Forkd {
            child: Some(child),
            pid,
            addrs: Vec::new(),
            log,
            dir,
        }
    }

    pub fn addr(&self) -> Addr {
        self.addrs[0].parse().expect("bound address")
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits for a log line containing `pattern` and returns it.
    pub fn wait_log(&mut self, pattern: &str) -> String {
        self.wait_log_count(pattern, 1).swap_remove(0)
    }

    /// Waits until `count` log lines contain `pattern`; returns them.
    pub fn wait_log_count(&mut self, pattern: &str, count: usize) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let hits: Vec<String> = self
                .log()
                .into_iter()
                .filter(|l| l.contains(pattern))
                .collect();
            if hits.len() >= count {
                return hits;
            }
            if Instant::now() > deadline {
                panic!(
                    "no {count} log lines with {pattern:?} in time; log:\n{}",
                    self.log().join("\n")
                );
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "forkd exited ({status}) before logging {pattern:?}; log:\n{}",
                    self.log().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The pid of the child serving the connection from `local` (the client's own address).
    pub fn child_for(&mut self, client: &Stream) -> i32 {
        let Stream::Tcp(s) = client else {
            panic!("child_for needs a TCP client")
        };
        let peer = format!(" peer={} ", s.local_addr().unwrap());
        let line = self.wait_log(&format!("accept{peer}"));
        field(&line, "pid").unwrap().parse().unwrap()
    }

    /// Asks for SIGUSR1 status lines until one says `key=value`.
    pub fn wait_status(&mut self, key: &str, value: &str) {
        for asked in 1..=100 {
            self.signal(libc::SIGUSR1);
            let lines = self.wait_log_count(" status signal=SIGUSR1 ", asked);
            if field(&lines[asked - 1], key) == Some(value) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no status line with {key}={value}: {:?}", self.log());
    }

    pub fn signal(&self, sig: libc::c_int) {
        assert_eq!(unsafe { libc::kill(self.pid, sig) }, 0, "kill {sig}");
    }

    /// Waits for forkd to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("still ours");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                // Let the log reader take the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            assert!(Instant::now() < deadline, "forkd did not exit in time");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Open descriptors of the supervisor.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .unwrap()
            .count()
    }

    /// (pid, state) of every process whose parent is the supervisor.
    pub fn children(&self) -> Vec<(i32, char)> {
        children_of(self.pid)
    }

    /// Waits until the supervisor has no child at all (none running, none a zombie).
    pub fn wait_no_children(&self) {
        self.wait_no_children_but(0);
    }

    /// Waits until the supervisor has exactly `alive` children, none of them a zombie.
    pub fn wait_no_children_but(&self, alive: usize) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let children = self.children();
            if children.len() == alive && children.iter().all(|(_, state)| *state != 'Z') {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "children: {children:?}, expected {alive}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Forkd {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_none() {
            // Children first, while their parent is still the supervisor we started.
            for (pid, _) in children_of(self.pid) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

/// (pid, state) of every process whose parent is `parent`, from /proc.
pub fn children_of(parent: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: i32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == parent {
            out.push((pid, state));
        }
    }
    out
}

/// User plus system CPU time of a process, from /proc/PID/stat.
pub fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15; fields[0] is field 3.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// A loopback port free a moment ago, for a program that must bind its own (a test that
/// cannot let the kernel choose: inetd, nginx, an address a reload adds).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of `key=` in a log line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// A protocol-v1 client connection for tests.
pub struct Client {
    reader: FrameReader<Stream>,
}

impl Client {
    pub fn connect(addr: &Addr) -> Client {
        Client::from_stream(forkd::client::connect(addr, PATIENCE).expect("connect"))
    }

    pub fn from_stream(stream: Stream) -> Client {
        Client {
            reader: FrameReader::new(stream, u32::MAX),
        }
    }

    /// Connects to a TCP `addr` from the loopback address `source` (any of 127.0.0.0/8), to
    /// look like another client.
    pub fn connect_from(source: &str, addr: &Addr) -> Client {
        let target = forkd::client::ipv4_target(addr).expect("an IPv4 address");
        let stream = forkd::client::connect_from(source.parse().unwrap(), target, PATIENCE)
            .expect("connect");
        Client {
            reader: FrameReader::new(Stream::Tcp(stream), u32::MAX),
        }
    }

    pub fn stream_ref(&self) -> &Stream {
        self.reader.get_ref()
    }

    pub fn stream(&mut self) -> &mut Stream {
        self.reader.get_mut()
    }

    pub fn send(&mut self, kind: Kind, payload: &[u8]) {
        write_frame(self.reader.get_mut(), kind, payload).expect("send frame");
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("send bytes");
    }

    /// Writes `bytes` from another thread, ignoring errors: for a peer that sends more than
    /// the server will read before it closes.
    pub fn send_in_background(&mut self, bytes: Vec<u8>) -> std::thread::JoinHandle<()> {
        let mut writer = self.reader.get_ref().try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = writer.write_all(&bytes);
        })
    }

    pub fn recv(&mut self) -> Frame {
        self.reader
            .next_frame()
            .expect("read frame")
            .expect("a frame, not EOF")
    }

    /// Sends DATA and returns the reply.
    pub fn echo(&mut self, payload: &[u8]) -> Frame {
        self.send(Kind::Data, payload);
        self.recv()
    }

    /// Sends `count` frames at once, "frame I" each, every tenth a PING and the rest DATA.
    pub fn send_pipelined(&mut self, count: u32) {
        let mut batch = Vec::new();
        for i in 0..count {
            let kind = if i % 10 == 0 { Kind::Ping } else { Kind::Data };
            batch.extend(Frame::new(kind, format!("frame {i}")).encode());
        }
        self.send_raw(&batch);
    }

    /// Asserts the replies to [`Client::send_pipelined`]: the same frames in order, PONG for
    /// each PING.
    pub fn expect_pipelined_replies(&mut self, count: u32) {
        for i in 0..count {
            let kind = if i % 10 == 0 { Kind::Pong } else { Kind::Data };
            assert_eq!(self.recv(), Frame::new(kind, format!("frame {i}")));
        }
    }

    /// Closes with a reset (SO_LINGER 0) rather than a FIN.
    pub fn reset(self) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(self.stream_ref());
        // SAFETY: the descriptor is this client's, open; the value lives across the call.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    }

    pub fn half_close(&mut self) {
        self.reader.get_mut().shutdown(Shutdown::Write).unwrap();
    }

    /// Asserts the next frame is an ERROR with `code`, then EOF; returns the message.
    pub fn expect_error(&mut self, code: u16) -> String {
        let reply = self.recv();
        let (got, message) = reply
            .error_parts()
            .unwrap_or_else(|| panic!("expected ERROR {code}, got {reply:?}"));
        assert_eq!(got, code, "{message}");
        self.expect_eof();
        message
    }

    /// Asserts the server closed: the next read is a clean EOF.
    pub fn expect_eof(&mut self) {
        match self.reader.next_frame() {
            Ok(None) => {}
            other => panic!("expected EOF, got {other:?}"),
        }
    }

    /// Reads whatever raw bytes arrive until EOF.
    pub fn read_to_end(mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.reader.get_mut().read_to_end(&mut out).expect("read");
        out
    }
}

/// Runs forkc with `args` (and `stdin`), returning (exit code, stdout, stderr).
pub fn forkc(args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let (code, stdout, stderr) = forkc_bytes(args, stdin);
    (
        code,
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// `forkc bench --json` against `addr` with `workload` on `connections` connections for
/// `seconds`, on a thread of its own: what [`forkc`] returns.
pub fn load_in_background(
    addr: &str,
    workload: &str,
    connections: u32,
    seconds: u32,
) -> std::thread::JoinHandle<(i32, String, String)> {
    let (addr, workload) = (addr.to_string(), workload.to_string());
    let (connections, seconds) = (connections.to_string(), seconds.to_string());
    std::thread::spawn(move || {
        let args = [
            "--connect",
            &addr,
            "bench",
            "--json",
            "--workload",
            &workload,
            "--connections",
            &connections,
            "--duration",
            &seconds,
        ];
        forkc(&args, b"")
    })
}

/// forkc with `args` and `stdin`: (exit code, stdout and stderr byte for byte).
pub fn forkc_bytes(args: &[&str], stdin: &[u8]) -> (i32, Vec<u8>, Vec<u8>) {
    let mut child = Command::new(FORKC)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn forkc");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    (out.status.code().unwrap_or(-1), out.stdout, out.stderr)
}

/// Runs forkd expecting it to refuse to start: (exit code, stderr).
pub fn forkd_fails(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(FORKD)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("forkd started with {args:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "forkd succeeded with {args:?}");
    (status.code().unwrap_or(-1), stderr)
}

pub fn path_str(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

pub fn unix_addr(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let addr = format!("unix:{}", path.display());
    (path, addr)
}

/// A process a test started outside [`Forkd`], killed (SIGKILL) and collected when the test
/// ends, passed or not.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A copy of forkd in its own directory, to be replaced (an upgrade in place).
pub fn installed(dir: &Path) -> PathBuf {
    let path = dir.join("forkd");
    std::fs::copy(FORKD, &path).unwrap();
    path
}

/// Puts a new file at `path` (a new inode, as dpkg does).
pub fn replace(path: &Path, with: &Path) {
    let fresh = path.with_extension("new");
    std::fs::copy(with, &fresh).unwrap();
    std::fs::rename(&fresh, path).unwrap();
}
