//! The job sandbox through `jobctl`, with two users (alice and bob): each
//! job runs as a uid and gid of its own, with private temporary directories,
//! a read-only view of the host, no host Unix sockets, its own cgroup
//! namespace, rlimits and a seccomp filter. Each test reproduces a way one
//! job used to reach another (or the host) and shows that it now fails, with
//! the error the kernel gives; every check compares exact output, so a
//! missing tool or a skipped step cannot pass.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use jobworker_tests::procs;

use crate::common::{CLI_TIMEOUT, Deployment};

/// The uids (and gids) jobs get by default (`job_uids`).
const JOB_IDS: std::ops::RangeInclusive<u32> = 61184..=65519;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Runs `sh -c script` as a job of `user` through `jobctl run` and returns
/// its output (stdout and stderr together); the job must exit 0.
fn run_sh(d: &Deployment, user: &str, script: &str) -> String {
    d.run(user, &["run", "--", "sh", "-c", script]).ok()
}

/// Waits until the output of `user`'s running job `id` ends with `marker`;
/// the output.
fn wait_output(d: &Deployment, user: &str, id: &str, marker: &str) -> String {
    let deadline = Instant::now() + CLI_TIMEOUT;
    loop {
        let output = d.run(user, &["logs", id]).ok();
        if output.ends_with(marker) {
            return output;
        }
        let status = json(&d.run(user, &["status", "--json", id]).ok());
        assert_eq!(
            status["state"], "running",
            "job {id} ended before printing {marker:?}: {output:?}"
        );
        assert!(
            Instant::now() < deadline,
            "job {id} never printed {marker:?}: {output:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A job's `status --json`.
fn status(d: &Deployment, user: &str, id: &str) -> serde_json::Value {
    json(&d.run(user, &["status", "--json", id]).ok())
}

/// The uid and gid a job's status reports; both set, equal and in the range.
fn job_ids(status: &serde_json::Value) -> u32 {
    let uid = status["uid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no uid in {status}"));
    let gid = status["gid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no gid in {status}"));
    assert_eq!(uid, gid, "uid and gid differ: {status}");
    let uid = u32::try_from(uid).unwrap();
    assert!(JOB_IDS.contains(&uid), "uid {uid} is not in {JOB_IDS:?}");
    uid
}

/// The job's command, from its status's init pid.
fn command_pid(status: &serde_json::Value) -> u32 {
    let init = status["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid in {status}"));
    procs::command_pid(u32::try_from(init).unwrap())
}

/// A job writing a mode-0600 secret into each temporary directory, then
/// sleeping.
fn secret_writer(name: &str) -> String {
    format!(
        "umask 077; for d in /tmp /var/tmp /dev/shm; do echo \"{name}'s secret\" > $d/secret-{name}; done; \
         stat -c '%a %u %n' /tmp/secret-{name} /var/tmp/secret-{name} /dev/shm/secret-{name}; \
         echo \"uid=$(id -u) gid=$(id -g) groups=$(id -G)\"; echo ready; exec sleep 600"
    )
}

/// A job looking for `name`'s secrets in its temporary directories.
fn secret_reader(name: &str) -> String {
    format!(
        "for d in /tmp /var/tmp /dev/shm; do echo \"$d: [$(ls -A $d)]\"; cat $d/secret-{name} 2>&1; \
         echo \"cat: $?\"; done"
    )
}

/// What [`secret_reader`] prints when it finds nothing.
fn nothing_found(name: &str) -> String {
    ["/tmp", "/var/tmp", "/dev/shm"]
        .iter()
        .map(|d| format!("{d}: []\ncat: {d}/secret-{name}: No such file or directory\ncat: 1\n"))
        .collect()
}

/// Alice's job writes 0600 files into /tmp, /var/tmp and /dev/shm and keeps
/// running; bob's job (a different uid, both in the job range, also in the
/// status) sees none of them and cannot open them, and neither can alice's
/// next job see bob's: each job's temporary directories are its own.
#[test]
fn sandbox_one_jobs_temporary_files_are_invisible_to_another() {
    let d = Deployment::start();
    let alices = d.start_job("alice", &["sh", "-c", &secret_writer("alice")]);
    let bobs = d.start_job("bob", &["sh", "-c", &secret_writer("bob")]);
    let mut uids = Vec::new();
    for (user, id) in [("alice", &alices), ("bob", &bobs)] {
        let output = wait_output(&d, user, id, "ready\n");
        let status = status(&d, user, id);
        assert_eq!(status["state"], "running");
        let uid = job_ids(&status);
        assert_eq!(
            output,
            format!(
                "600 {uid} /tmp/secret-{user}\n600 {uid} /var/tmp/secret-{user}\n\
                 600 {uid} /dev/shm/secret-{user}\nuid={uid} gid={uid} groups={uid}\nready\n"
            ),
            "{user}'s job"
        );
        // The command runs as the job's uid; its files are really there, in
        // the job's own /tmp, not in the host's.
        let pid = command_pid(&status);
        assert_eq!(
            procs::ids(pid),
            Some(procs::expected_ids(uid)),
            "{user}'s command"
        );
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        for dir in ["tmp", "var/tmp", "dev/shm"] {
            let in_job = root.join(dir).join(format!("secret-{user}"));
            assert_eq!(
                std::fs::read_to_string(&in_job).unwrap(),
                format!("{user}'s secret\n"),
                "{}",
                in_job.display()
            );
            assert!(
                !Path::new("/")
                    .join(dir)
                    .join(format!("secret-{user}"))
                    .exists()
            );
        }
        uids.push(uid);
    }
    assert_ne!(uids[0], uids[1], "alice's and bob's jobs share a uid");

    // While both run: bob looks for alice's files, alice for bob's.
    assert_eq!(
        run_sh(&d, "bob", &secret_reader("alice")),
        nothing_found("alice")
    );
    assert_eq!(
        run_sh(&d, "alice", &secret_reader("bob")),
        nothing_found("bob")
    );

    for (user, id) in [("alice", &alices), ("bob", &bobs)] {
        d.run(user, &["stop", "--grace", "1s", id]).ok();
    }
}

/// Alice's job cannot add a key to its user keyring (the seccomp filter
/// refuses add_key), and bob's job can neither show its user keyring nor
/// request alice's key: keys can no longer pass between jobs.
#[test]
fn sandbox_keyrings_are_out_of_reach() {
    let d = Deployment::start();
    assert_eq!(
        run_sh(
            &d,
            "alice",
            "keyctl add user jobworker-secret v @u 2>&1; echo \"add: $?\""
        ),
        "add_key: Operation not permitted\nadd: 1\n"
    );
    // keyctl show prints the keyring's header to stdout (flushed at exit)
    // after its error on stderr.
    assert_eq!(
        run_sh(
            &d,
            "bob",
            "keyctl show @u 2>&1; echo \"show: $?\"; keyctl request user jobworker-secret 2>&1; \
             echo \"request: $?\""
        ),
        "Unable to dump key: Operation not permitted\nKeyring\nshow: 1\n\
         request_key: Operation not permitted\nrequest: 1\n"
    );
}

/// Alice's job takes every inotify instance it can get (at least the
/// per-user limit of 128) and holds them; bob's job can still create one,
/// because each job counts as a user of its own.
#[test]
fn sandbox_one_job_exhausting_inotify_does_not_starve_another() {
    let d = Deployment::start();
    let grabber = "$| = 1; my $n = 0; while ($n < 4096) { last if syscall(294, 0) < 0; $n++ } \
                   my $e = $!; print \"instances=$n error=$e\\n\"; sleep 600";
    let alices = d.start_job("alice", &["/usr/bin/perl", "-e", grabber]);
    let output = wait_output(&d, "alice", &alices, "\n");
    let line = output.trim_end();
    let (count, error) = line
        .strip_prefix("instances=")
        .and_then(|rest| rest.split_once(" error="))
        .unwrap_or_else(|| panic!("{output:?}"));
    let count: u32 = count.parse().unwrap();
    assert!(count >= 128, "alice's job got only {count} instances");
    assert_eq!(error, "Too many open files", "{output:?}");
    // It holds them while bob's job runs.
    let status = status(&d, "alice", &alices);
    assert_eq!(status["state"], "running");
    let pid = command_pid(&status);
    let held = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:inotify")
        })
        .count();
    assert_eq!(held, count as usize, "inotify instances alice's job holds");

    let bobs = d.run(
        "bob",
        &[
            "run",
            "--",
            "/usr/bin/perl",
            "-e",
            "my $fd = syscall(294, 0); print $fd >= 0 ? \"inotify ok\\n\" : \"inotify: $!\\n\"",
        ],
    );
    assert_eq!(bobs.ok(), "inotify ok\n");
    d.run("alice", &["stop", "--grace", "1s", &alices]).ok();
}

/// A root service's Unix socket in the host's /tmp or /run, mode 0777:
/// bound here, counting the connections it accepts. Removed on drop.
struct HostSocket {
    path: PathBuf,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostSocket {
    fn bind(dir: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = PathBuf::from(format!(
            "{dir}/jobworker-test-{}-{}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, stop) = (Arc::clone(&accepted), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok(_) => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Self {
            path,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> usize {
        // Let a connection in flight be accepted first.
        std::thread::sleep(Duration::from_millis(100));
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for HostSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A root service listening on a 0777 socket in the host's /tmp and in /run
/// (reachable by any uid on the host, as shown with socat as nobody): a
/// job's socat cannot connect to either, since neither path exists in the
/// job, and the service sees no connection from it.
#[test]
fn sandbox_host_unix_sockets_are_unreachable() {
    let d = Deployment::start();
    let sockets = [HostSocket::bind("/tmp"), HostSocket::bind("/run")];
    for socket in &sockets {
        let host = crate::common::run_with_timeout(
            std::process::Command::new("setpriv")
                .args([
                    "--reuid=nobody",
                    "--regid=nogroup",
                    "--clear-groups",
                    "socat",
                    "-",
                ])
                .arg(format!("UNIX-CONNECT:{}", socket.path.display())),
            CLI_TIMEOUT,
        );
        host.ok();
        assert_eq!(
            socket.accepted(),
            1,
            "nobody on the host reaches {}",
            socket.path.display()
        );
    }
    let script: String = sockets
        .iter()
        .map(|s| {
            let p = s.path.display();
            format!(
                "if [ -e {p} ]; then echo '{p} exists'; else echo '{p} absent'; fi; \
                 out=$(socat - UNIX-CONNECT:{p} </dev/null 2>&1); echo \"rc=$? $out\"; "
            )
        })
        .collect();
    let output = run_sh(&d, "alice", &script);
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), 4, "{output}");
    for (i, socket) in sockets.iter().enumerate() {
        let p = socket.path.display().to_string();
        assert_eq!(lines[2 * i], format!("{p} absent"), "{output}");
        let refused = lines[2 * i + 1];
        assert!(
            refused.starts_with("rc=1 ")
                && refused.contains(&format!("\"{p}\""))
                && refused.ends_with(": No such file or directory"),
            "{output}"
        );
        assert_eq!(socket.accepted(), 1, "the job reached {p}");
    }
}

/// Ways out of the sandbox, all closed: new user namespaces and mounts are
/// "Operation not permitted" (so is adding a key), every directory outside
/// the job's temporary directories and /work is read-only, the job starts
/// in /work (its own), sees itself at the root of its own cgroup namespace,
/// and runs with no_new_privs under a seccomp filter.
#[test]
fn sandbox_a_job_cannot_escape() {
    let d = Deployment::start();
    let script = r#"
for d in / /etc /usr /var /opt /home /root /run; do touch ${d%/}/jobworker-probe 2>&1; echo "touch: $?"; done
for d in /tmp /var/tmp /dev/shm /run/lock /work; do echo x > $d/probe && echo "$d writable"; done
stat -c '%a %n' /tmp /var/tmp /dev/shm /run/lock
[ "$(stat -c %u /work)" = "$(id -u)" ] && echo "/work is mine"
pwd
grep '^0::' /proc/self/cgroup
grep '^NoNewPrivs:' /proc/self/status
grep '^Seccomp:' /proc/self/status
unshare -U true 2>&1; echo "unshare -U: $?"
unshare -Urm true 2>&1; echo "unshare -Urm: $?"
/usr/bin/perl -e '($s, $t, $f) = ("none", "/work", "tmpfs"); print syscall(165, $s, $t, $f, 0, 0) < 0 ? "mount: $!\n" : "mount: done\n"'
keyctl add user k v @u 2>&1; echo "keyctl: $?"
"#;
    let output = run_sh(&d, "alice", script);
    let mut expected = String::new();
    for dir in [
        "/", "/etc/", "/usr/", "/var/", "/opt/", "/home/", "/root/", "/run/",
    ] {
        expected.push_str(&format!(
            "touch: cannot touch '{dir}jobworker-probe': Read-only file system\ntouch: 1\n"
        ));
        assert!(!Path::new(&format!("{dir}jobworker-probe")).exists());
    }
    for dir in ["/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/work"] {
        expected.push_str(&format!("{dir} writable\n"));
    }
    expected.push_str(
        "1777 /tmp\n1777 /var/tmp\n1777 /dev/shm\n1777 /run/lock\n/work is mine\n/work\n0::/\n\
         NoNewPrivs:\t1\nSeccomp:\t2\n\
         unshare: unshare failed: Operation not permitted\nunshare -U: 1\n\
         unshare: unshare failed: Operation not permitted\nunshare -Urm: 1\n\
         mount: Operation not permitted\n\
         add_key: Operation not permitted\nkeyctl: 1\n",
    );
    assert_eq!(output, expected);
}

/// The hard `RLIMIT_NOFILE` a job gets: 524288, where the supervisor (root,
/// like this test) may raise a hard limit; where the host withholds
/// CAP_SYS_RESOURCE even from root (some containers and VMs), no more than
/// its own hard limit, which it cannot raise.
fn job_hard_nofile() -> u64 {
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).unwrap())
        .unwrap();
    if effective & (1 << CAP_SYS_RESOURCE) != 0 {
        return 524_288;
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let hard: u64 = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    eprintln!("no CAP_SYS_RESOURCE here: a job's hard open files limit is at most {hard}");
    hard.min(524_288)
}

/// The rest of the sandbox: a minimal /dev, empty (masked) /home and /root
/// and a /run with nothing but the mount point of /run/lock, the uid and
/// gid of the job with no supplementary groups, the rlimits (see
/// [`job_hard_nofile`]), and the seccomp filter's answers to the syscalls it
/// refuses (EPERM; ENOSYS for clone3, so threads still start through clone).
#[test]
fn sandbox_dev_masks_rlimits_and_the_seccomp_filter() {
    let d = Deployment::start();
    let script = r#"
echo "dev: $(ls -A /dev | tr '\n' ' ')"
for d in /run /home /root; do echo "$d: [$(ls -A $d)]"; done
[ -e /dev/sda ] || [ -e /dev/vda ] || [ -e /dev/mem ] || [ -e /dev/kmsg ] || echo "no host devices"
echo "ids: $(id -u) $(id -g) [$(id -G)]"
echo "nofile: $(ulimit -n) $(ulimit -Hn) core: $(ulimit -c)"
/usr/bin/perl -e '
for (["bpf", 321, 0, 0, 0], ["perf_event_open", 298, 0, 0, -1, -1, 0], ["userfaultfd", 323, 0],
     ["io_uring_setup", 425, 1, 0], ["add_key", 248, 0, 0, 0, 0, 0], ["request_key", 249, 0, 0, 0, 0],
     ["keyctl", 250, 0, -3], ["clone3", 435, 0, 0], ["x32 getpid", 0x40000000 | 39]) {
    my ($name, $nr, @args) = @$_;
    my $r = syscall($nr, @args);
    print "$name: ", ($r < 0 ? "$!" : "returned $r"), "\n";
}'
/usr/bin/python3 -c 'import threading; t = threading.Thread(target=lambda: print("thread ran")); t.start(); t.join()'
"#;
    let id = d.start_job("alice", &["sh", "-c", script]);
    let status = d.wait_ended("alice", &id);
    assert_eq!(status["state"], "finished", "{status}");
    assert_eq!(status["exit_code"], 0, "{status}");
    let uid = job_ids(&status);
    let output = d.run("alice", &["logs", &id]).ok();
    let hard_nofile = job_hard_nofile();
    let expected = format!(
        "dev: fd full null ptmx pts random shm stderr stdin stdout tty urandom zero \n\
         /run: [lock]\n/home: []\n/root: []\nno host devices\n\
         ids: {uid} {uid} [{uid}]\nnofile: 1024 {hard_nofile} core: 0\n\
         bpf: Operation not permitted\nperf_event_open: Operation not permitted\n\
         userfaultfd: Operation not permitted\nio_uring_setup: Operation not permitted\n\
         add_key: Operation not permitted\nrequest_key: Operation not permitted\n\
         keyctl: Operation not permitted\nclone3: Function not implemented\n\
         x32 getpid: Operation not permitted\nthread ran\n"
    );
    assert_eq!(output, expected);
}
