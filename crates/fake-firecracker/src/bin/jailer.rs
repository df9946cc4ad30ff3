//! A stand-in for Firecracker's `jailer` (v1.15), for tests on hosts
//! without KVM.
//!
//! It parses the command line as the jailer does and refuses what it
//! refuses (unknown or repeated flags, an `--id` other than 1 to 64
//! letters, digits and `-`, an exec file that is missing or whose name
//! lacks `firecracker`, a chroot base that is not an existing absolute
//! directory, a uid or gid that is not a number, malformed `--cgroup` and
//! `--resource-limit` entries, cgroup controllers the host lacks), builds
//! `<base>/<exec name>/<id>/root` as the jailer does (exec file in it,
//! `/`, `/dev`, `/dev/net`, `/run` owned by uid:gid, mode 0700), checks
//! that the paths on Firecracker's command line are inside it, and runs the
//! exec file as uid:gid with the jail's root as its working directory and
//! `FAKE_FC_JAIL_ROOT` set, so that the fake Firecracker resolves every
//! path inside the jail. With `--new-pid-ns` it writes the child's pid to
//! `<root>/<exec name>.pid` and exits, as the jailer does.
//!
//! It makes `/dev/kvm` in the jail (10:232, owned by uid:gid), as the
//! jailer does. What it does not do: chroot, pivot_root, mount or PID
//! namespaces, cgroups (entries are checked, not applied), other devices. The fake
//! Firecracker is dynamically linked and shares the host's `/proc`.
//! Like the jailer it clears the environment, except `FAKE_FC_*` (the
//! fake's own settings). `FAKE_JAILER_RECORD` names a file that gets one
//! JSON line per run: `{"args": [...]}`.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const VERSION: &str = "1.15.1";
/// Flags that take a value, and whether they may repeat.
const VALUE_FLAGS: [(&str, bool); 9] = [
    ("id", false),
    ("exec-file", false),
    ("uid", false),
    ("gid", false),
    ("chroot-base-dir", false),
    ("netns", false),
    ("cgroup-version", false),
    ("parent-cgroup", false),
    ("cgroup", true),
];
const SWITCHES: [&str; 3] = ["daemonize", "new-pid-ns", "version"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    record(&args);
    match run(&args) {
        Ok(()) => {}
        Err(message) => {
            eprintln!("Jailer error: {message}");
            std::process::exit(1);
        }
    }
}

/// `/dev/kvm` in the jail, as the jailer makes it: a character device
/// 10:232 owned by uid:gid, mode 0600.
fn make_kvm_node(path: &Path, uid: u32, gid: u32) -> Result<(), String> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(path);
    // SAFETY: mknod(2) gets a NUL-terminated path that lives across the call.
    let made = unsafe {
        libc::mknod(
            c_path.as_ptr(),
            libc::S_IFCHR | 0o600,
            libc::makedev(10, 232),
        )
    };
    if made != 0 {
        return Err(format!(
            "Failed to create {} via mknod inside the jail: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| format!("Failed to change owner for {}: {e}", path.display()))
}

fn record(args: &[String]) {
    let Some(path) = std::env::var_os("FAKE_JAILER_RECORD") else {
        return;
    };
    let line = format!("{}\n", serde_json::json!({ "args": args }));
    if let Ok(mut file) = std::fs::File::options()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = std::io::Write::write_all(&mut file, line.as_bytes());
    }
}

struct Parsed {
    values: HashMap<String, Vec<String>>,
    switches: Vec<String>,
    extra: Vec<String>,
}

impl Parsed {
    fn one(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    fn required(&self, name: &str) -> Result<&str, String> {
        self.one(name).ok_or_else(|| {
            format!("Arguments parsing error: Argument '{name}' required, but not found.")
        })
    }
}

fn parse(args: &[String]) -> Result<Parsed, String> {
    let mut parsed = Parsed {
        values: HashMap::new(),
        switches: Vec::new(),
        extra: Vec::new(),
    };
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--" {
            parsed.extra = rest.cloned().collect();
            break;
        }
        let name = arg.strip_prefix("--").ok_or_else(|| {
            format!("Arguments parsing error: Found argument '{arg}' which wasn't expected.")
        })?;
        if let Some((_, repeats)) = VALUE_FLAGS.iter().find(|(flag, _)| *flag == name) {
            let value = rest
                .next()
                .filter(|v| !v.starts_with("--"))
                .ok_or_else(|| {
                    format!("Arguments parsing error: Argument '{name}' requires a value.")
                })?;
            let values = parsed.values.entry(name.to_owned()).or_default();
            if !values.is_empty() && !repeats {
                return Err(format!(
                    "Arguments parsing error: The argument '{name}' was provided more than once."
                ));
            }
            values.push(value.clone());
        } else if SWITCHES.contains(&name) {
            if parsed.switches.iter().any(|s| s == name) {
                return Err(format!(
                    "Arguments parsing error: The argument '{name}' was provided more than once."
                ));
            }
            parsed.switches.push(name.to_owned());
        } else {
            return Err(format!(
                "Arguments parsing error: Found argument '{arg}' which wasn't expected."
            ));
        }
    }
    Ok(parsed)
}

fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err(format!(
            "Invalid instance ID: InvalidLen({}, 1, 64)",
            id.len()
        ));
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        Some(c) => Err(format!("Invalid instance ID: InvalidChar({c:?})")),
        None => Ok(()),
    }
}

/// `<controller>.<property>=<value>`, the controller available on the
/// host's cgroup v2 root (v1: mounted).
fn check_cgroup(entry: &str, version: &str) -> Result<(), String> {
    let parts: Vec<&str> = entry.split('=').collect();
    if parts.len() != 2 || parts[1].is_empty() {
        return Err(format!("Invalid format for cgroups: {entry}"));
    }
    let file: Vec<&str> = parts[0].split('.').collect();
    if file.len() != 2 || file.iter().any(|p| p.is_empty()) {
        return Err(format!("Cgroup invalid file: {}", parts[0]));
    }
    let controller = file[0];
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let available = mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match (fields.get(2), version) {
            (Some(&"cgroup2"), "2") => {
                std::fs::read_to_string(Path::new(fields[1]).join("cgroup.controllers"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .any(|c| c == controller)
            }
            (Some(&"cgroup"), "1") => fields
                .get(3)
                .is_some_and(|o| o.split(',').any(|c| c == controller)),
            _ => false,
        }
    });
    if !available {
        return Err(format!("Controller {controller} is unavailable"));
    }
    Ok(())
}

fn run(args: &[String]) -> Result<(), String> {
    let parsed = parse(args)?;
    if parsed.switches.iter().any(|s| s == "version") {
        println!("Jailer v{VERSION}");
        return Ok(());
    }
    let id = parsed.required("id")?;
    validate_id(id)?;
    let exec_file = parsed.required("exec-file")?;
    let exec_file = std::fs::canonicalize(exec_file)
        .map_err(|e| format!("Failed to canonicalize path {exec_file}: {e}"))?;
    if !exec_file.is_file() {
        return Err(format!("{} is not a file", exec_file.display()));
    }
    let exec_name = exec_file
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| {
            format!(
                "Failed to extract filename from path {}",
                exec_file.display()
            )
        })?
        .to_owned();
    if !exec_name.contains("firecracker") {
        return Err(format!(
            "Invalid filename. The filename of `--exec-file` option must contain \"firecracker\": {exec_name}"
        ));
    }
    let uid_text = parsed.required("uid")?;
    let uid: u32 = uid_text
        .parse()
        .map_err(|_| format!("Invalid uid: {uid_text}"))?;
    let gid_text = parsed.required("gid")?;
    let gid: u32 = gid_text
        .parse()
        .map_err(|_| format!("Invalid gid: {gid_text}"))?;
    let base = parsed.one("chroot-base-dir").unwrap_or("/srv/jailer");
    if !Path::new(base).is_absolute() {
        return Err(format!("the chroot base {base} is not an absolute path"));
    }
    let base = std::fs::canonicalize(base)
        .map_err(|e| format!("Failed to canonicalize path {base}: {e}"))?;
    if !base.is_dir() {
        return Err(format!("{} is not a directory", base.display()));
    }
    let version = parsed.one("cgroup-version").unwrap_or("1");
    if version != "1" && version != "2" {
        return Err(format!("{version} is an invalid cgroup version specifier"));
    }
    if let Some(parent) = parsed.one("parent-cgroup") {
        let bad = Path::new(parent)
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)));
        if bad {
            return Err(
                "Parent cgroup path is invalid. Path should not be absolute or contain '..' or '.'"
                    .into(),
            );
        }
    }
    for entry in parsed.values.get("cgroup").into_iter().flatten() {
        check_cgroup(entry, version)?;
    }
    if parsed
        .extra
        .iter()
        .any(|a| a == "--id" || a.starts_with("--id="))
    {
        return Err(
            "the jailer passes --id to Firecracker itself; a second one makes it fail".into(),
        );
    }

    let root = base.join(&exec_name).join(id).join("root");
    std::fs::create_dir_all(&root)
        .map_err(|e| format!("Failed to create directory {}: {e}", root.display()))?;
    let exec_copy = root.join(&exec_name);
    // Never copy onto a link of the exec file itself (a jail reused).
    let _ = std::fs::remove_file(&exec_copy);
    match std::fs::hard_link(&exec_file, &exec_copy) {
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            std::fs::copy(&exec_file, &exec_copy).map(drop)
        }
        other => other,
    }
    .map_err(|e| format!("Failed to copy {}: {e}", exec_file.display()))?;
    for folder in ["", "dev", "dev/net", "run"] {
        let path = root.join(folder);
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("Failed to create directory {}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("Failed to change permissions on {}: {e}", path.display()))?;
        std::os::unix::fs::chown(&path, Some(uid), Some(gid))
            .map_err(|e| format!("Failed to change owner for {}: {e}", path.display()))?;
    }
    make_kvm_node(&root.join("dev/kvm"), uid, gid)?;
    check_layout(&root, &parsed.extra)?;

    let mut command = Command::new(format!("./{exec_name}"));
    command
        .arg("--id")
        .arg(id)
        .arg("--start-time-us")
        .arg("0")
        .arg("--start-time-cpu-us")
        .arg("0")
        .args(&parsed.extra)
        .env_clear()
        .envs(std::env::vars().filter(|(k, _)| k.starts_with("FAKE_FC_")))
        .env("FAKE_FC_JAIL_ROOT", &root);
    let root_c = CString::new(root.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: the closure calls only chdir, setgroups, setgid and setuid,
    // all async-signal-safe, between fork and exec.
    unsafe {
        command.pre_exec(move || {
            // As root, before the switch: the path above the jail need not
            // be open to the VMM user.
            if libc::chdir(root_c.as_ptr()) != 0
                || libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    if parsed.switches.iter().any(|s| s == "new-pid-ns") {
        let child = command
            .spawn()
            .map_err(|e| format!("Failed to exec into Firecracker: {e}"))?;
        let pid_file = root.join(format!("{exec_name}.pid"));
        let mut file = std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(&pid_file)
            .map_err(|e| format!("Failed to open file {}: {e}", pid_file.display()))?;
        std::io::Write::write_all(&mut file, child.id().to_string().as_bytes())
            .map_err(|e| format!("Failed to write to {}: {e}", pid_file.display()))?;
        // The child is left to run: the jailer exits at once.
        drop(child);
        return Ok(());
    }
    Err(format!(
        "Failed to exec into Firecracker: {}",
        command.exec()
    ))
}

/// Every path Firecracker's own arguments name must be inside the jail.
fn check_layout(root: &Path, firecracker_args: &[String]) -> Result<(), String> {
    let mut args = firecracker_args.iter();
    while let Some(arg) = args.next() {
        let (must_exist, what) = match arg.as_str() {
            "--api-sock" => (false, "the API socket's directory"),
            "--config-file" | "--metadata" | "--log-path" | "--metrics-path" => (true, "the file"),
            _ => continue,
        };
        let Some(path) = args.next() else {
            return Err(format!("{arg} requires a value"));
        };
        let inside = inside_jail(root, path)?;
        let check = if must_exist {
            inside.clone()
        } else {
            inside.parent().map(PathBuf::from).unwrap_or(inside.clone())
        };
        if !check.exists() {
            return Err(format!(
                "{what} of {arg} {path} is not in the jail ({})",
                check.display()
            ));
        }
    }
    Ok(())
}

/// `path` as seen from inside the jail, on the host; never above `root`.
fn inside_jail(root: &Path, path: &str) -> Result<PathBuf, String> {
    let mut inside = root.to_owned();
    for component in Path::new(path).components() {
        match component {
            std::path::Component::Normal(name) => inside.push(name),
            std::path::Component::ParentDir if inside == root => {
                return Err(format!("{path} leaves the jail"));
            }
            std::path::Component::ParentDir => {
                inside.pop();
            }
            _ => {}
        }
    }
    Ok(inside)
}
