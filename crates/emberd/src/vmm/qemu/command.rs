//! The QEMU command line of one sandbox.
//!
//! Owns every argument: machine, accelerator, seccomp sandbox, privilege
//! drop, guest memory (anonymous, or a file mapped shared by a template's
//! VM and privately by its clones), devices, the console on stdio, the
//! control sockets and an incoming migration (on an inherited descriptor,
//! or deferred until QMP names one). Paths inside option values are
//! comma-escaped. Must never name a URI that makes QEMU spawn a program.

use std::os::fd::RawFd;
use std::path::Path;

use emberd_proto::boundary::AGENT_SERIAL_PORT;
use tokio::process::Command;

use super::super::vmm_user::VmmUser;
use super::super::{Accel, BootSpec};

/// QEMU's seccomp filter: on, with obsolete system calls, spawning
/// (fork/exec), and scheduler/affinity/priority changes denied.
/// `elevateprivileges` is left out: with `-runas` it makes QEMU die at
/// start (see docs/design-notes.md).
pub const SANDBOX: &str = "on,obsolete=deny,spawn=deny,resourcecontrol=deny";

/// TCG's translation cache, MiB, unless the operator sets
/// `--tb-size-mib`. QEMU's default grows to 1 GiB on a large host; a bound
/// keeps a VMM's memory predictable (and its cgroup's `memory.max`
/// honest). Python's steady execs need about 32 MiB of translated code and
/// thrash below that; 64 leaves room. See docs/performance.md,
/// "Translation cache size".
pub const TCG_TRANSLATION_CACHE_MIB: u32 = 64;

/// The id of the memory backend object holding guest RAM in a file.
const RAM_OBJECT: &str = "ram";

/// Where the guest's RAM lives.
#[derive(Debug, Clone, Copy)]
pub enum GuestMemory<'a> {
    /// Anonymous memory of the QEMU process (`-m` alone).
    Anonymous,
    /// A file mapped shared: the guest's writes land in it. A template's VM.
    Shared(&'a Path),
    /// A file mapped private: the guest's writes are copied on write into
    /// the clone's own memory and never reach the file. `read_only` opens
    /// the file read-only too (QEMU 8.2 and later, `readonly=on,rom=off`).
    Private { path: &'a Path, read_only: bool },
}

/// How an incoming migration reaches QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// None: a cold boot.
    None,
    /// An inherited descriptor, read as soon as QEMU starts.
    Fd(RawFd),
    /// `-incoming defer`: QEMU waits for `migrate-incoming`, so that
    /// capabilities can be set first (and the process started ahead).
    Defer,
}

/// What varies between the QEMU processes of one backend.
#[derive(Debug, Clone, Copy)]
pub struct Launch<'a> {
    pub binary: &'a Path,
    pub accel: Accel,
    /// Kernel arguments that depend on the accelerator.
    pub accel_kernel_args: &'a [String],
    /// The user QEMU drops to once set up, when the daemon is root.
    pub runas: Option<&'a VmmUser>,
    /// An incoming migration, if any.
    pub incoming: Incoming,
    /// Where guest RAM lives.
    pub memory: GuestMemory<'a>,
    /// TCG's translation cache, MiB (unused under KVM).
    pub tb_size_mib: u32,
}

/// A path inside a QEMU option value (`key=value,key=value`), where a comma
/// is written twice.
pub fn opt_path(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// The command that runs `spec` under `launch`.
pub fn command(launch: &Launch<'_>, spec: &BootSpec) -> Command {
    let dir = &spec.sandbox_dir;
    let mut cmd = Command::new(launch.binary);
    let mut append = vec![
        "console=ttyS0".to_owned(),
        "reboot=t".to_owned(),
        "panic=-1".to_owned(),
        "quiet".to_owned(),
    ];
    append.extend(launch.accel_kernel_args.iter().cloned());
    append.extend(spec.extra_kernel_args.iter().cloned());
    let mut machine = "microvm,x-option-roms=off,isa-serial=on,rtc=on".to_owned();
    let file = match launch.memory {
        GuestMemory::Anonymous => None,
        GuestMemory::Shared(path) => Some((path, "share=on")),
        GuestMemory::Private {
            path,
            read_only: false,
        } => Some((path, "share=off")),
        GuestMemory::Private {
            path,
            read_only: true,
        } => Some((path, "share=off,readonly=on,rom=off")),
    };
    if let Some((path, mode)) = file {
        machine.push_str(&format!(",memory-backend={RAM_OBJECT}"));
        cmd.args([
            "-object",
            &format!(
                "memory-backend-file,id={RAM_OBJECT},mem-path={},size={}M,{mode}",
                opt_path(path),
                spec.memory_mib
            ),
        ]);
    }
    cmd.args(["-M", &machine]);
    match launch.accel {
        Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => cmd.args(["-accel", &format!("tcg,tb-size={}", launch.tb_size_mib)]),
    };
    cmd.args(["-sandbox", SANDBOX]);
    if let Some(user) = launch.runas {
        cmd.args(["-runas", &user.name]);
    }
    // -kernel and -initrd take a whole path, not an option list.
    cmd.args(["-smp", &spec.vcpus.to_string()])
        .args(["-m", &format!("{}M", spec.memory_mib)])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(&spec.kernel_bzimage)
        .arg("-initrd")
        .arg(&spec.initramfs)
        .args(["-append", &append.join(" ")])
        // The serial console goes to stdout, a pipe the daemon drains into
        // a bounded ring; QEMU's own messages go to stderr (qemu.log).
        .args(["-chardev", "stdio,id=console,signal=off"])
        .args(["-serial", "chardev:console"])
        .args([
            "-drive",
            &format!(
                "id=pack,file={},format=raw,if=none,readonly=on",
                opt_path(&spec.root_disk)
            ),
        ])
        .args(["-device", "virtio-blk-device,drive=pack"])
        .args(["-device", "virtio-serial-device"])
        .args([
            "-chardev",
            &format!(
                "socket,id=agent,path={},server=on,wait=off",
                opt_path(&dir.join("agent.sock"))
            ),
        ])
        .args([
            "-device",
            &format!("virtserialport,chardev=agent,name={AGENT_SERIAL_PORT}"),
        ])
        .args([
            "-qmp",
            &format!(
                "unix:{},server=on,wait=off",
                opt_path(&dir.join("qmp.sock"))
            ),
        ]);
    match launch.incoming {
        Incoming::None => {}
        Incoming::Fd(fd) => {
            cmd.args(["-incoming", &format!("fd:{fd}")]);
        }
        Incoming::Defer => {
            cmd.args(["-incoming", "defer"]);
        }
    }
    cmd
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;

    fn spec(dir: &str) -> BootSpec {
        BootSpec {
            sandbox_id: "sb_000000000001".into(),
            sandbox_dir: PathBuf::from(dir),
            kernel_bzimage: "/data/k,1/bzImage".into(),
            kernel_vmlinux: "/data/vmlinux".into(),
            initramfs: "/data/initramfs".into(),
            root_disk: "/data/packs/py,format=qcow2/root.squashfs".into(),
            vcpus: 2,
            memory_mib: 256,
            extra_kernel_args: vec![],
            boot_timeout: Duration::from_secs(30),
            memory_file: None,
        }
    }

    fn args(launch: &Launch<'_>, spec: &BootSpec) -> Vec<String> {
        command(launch, spec)
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn value_of<'a>(args: &'a [String], flag: &str, prefix: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag && w[1].starts_with(prefix))
            .map(|w| w[1].as_str())
            .collect()
    }

    fn launch<'a>(runas: Option<&'a VmmUser>, incoming_fd: Option<RawFd>) -> Launch<'a> {
        Launch {
            binary: Path::new("qemu-system-x86_64"),
            accel: Accel::Tcg,
            accel_kernel_args: &[],
            runas,
            incoming: incoming_fd.map_or(Incoming::None, Incoming::Fd),
            memory: GuestMemory::Anonymous,
            tb_size_mib: TCG_TRANSLATION_CACHE_MIB,
        }
    }

    #[test]
    fn commas_in_paths_are_doubled_inside_option_values() {
        assert_eq!(opt_path(Path::new("/a,b/c,,d")), "/a,,b/c,,,,d");
        let spec = spec("/run/e,x/sb_1");
        let args = args(&launch(None, None), &spec);
        assert_eq!(
            value_of(&args, "-drive", "id=pack"),
            ["id=pack,file=/data/packs/py,,format=qcow2/root.squashfs,format=raw,if=none,readonly=on"]
        );
        assert_eq!(
            value_of(&args, "-chardev", "socket"),
            ["socket,id=agent,path=/run/e,,x/sb_1/agent.sock,server=on,wait=off"]
        );
        assert_eq!(
            value_of(&args, "-qmp", ""),
            ["unix:/run/e,,x/sb_1/qmp.sock,server=on,wait=off"]
        );
        // Whole-path options are not option lists and stay as they are.
        assert_eq!(value_of(&args, "-kernel", ""), ["/data/k,1/bzImage"]);
    }

    #[test]
    fn seccomp_is_always_on_and_runas_follows_the_vmm_user() {
        let user = VmmUser {
            name: "emberd-vmm".into(),
            uid: 999,
            gid: 995,
        };
        let spec = spec("/run/emberd/sb_1");
        for runas in [None, Some(&user)] {
            let args = args(&launch(runas, None), &spec);
            assert_eq!(
                value_of(&args, "-sandbox", ""),
                ["on,obsolete=deny,spawn=deny,resourcecontrol=deny"]
            );
            assert!(!args.iter().any(|a| a.contains("elevateprivileges")));
            let expected: &[&str] = if runas.is_some() {
                &["emberd-vmm"]
            } else {
                &[]
            };
            assert_eq!(value_of(&args, "-runas", ""), expected);
        }
    }

    #[test]
    fn tcg_gets_a_bounded_translation_cache() {
        let args = args(&launch(None, None), &spec("/run/emberd/sb_1"));
        assert_eq!(value_of(&args, "-accel", ""), ["tcg,tb-size=64"]);
        let small = Launch {
            tb_size_mib: 32,
            ..launch(None, None)
        };
        let args = self::args(&small, &spec("/run/emberd/sb_1"));
        assert_eq!(value_of(&args, "-accel", ""), ["tcg,tb-size=32"]);
        let kvm = Launch {
            accel: Accel::Kvm,
            ..launch(None, None)
        };
        let args = self::args(&kvm, &spec("/run/emberd/sb_1"));
        assert_eq!(value_of(&args, "-accel", ""), ["kvm"]);
        assert_eq!(value_of(&args, "-cpu", ""), ["host"]);
    }

    #[test]
    fn the_console_is_on_stdio_and_no_file() {
        let args = args(&launch(None, None), &spec("/run/emberd/sb_1"));
        assert_eq!(
            value_of(&args, "-chardev", "stdio"),
            ["stdio,id=console,signal=off"]
        );
        assert_eq!(value_of(&args, "-serial", ""), ["chardev:console"]);
        assert!(!args.iter().any(|a| a.contains("console.log")), "{args:?}");
    }

    #[test]
    fn an_incoming_migration_is_an_inherited_descriptor_never_a_program() {
        let spec = spec("/run/emberd/sb_1");
        let args = args(&launch(None, Some(7)), &spec);
        assert_eq!(value_of(&args, "-incoming", ""), ["fd:7"]);
        assert!(!args.iter().any(|a| a.contains("exec:")), "{args:?}");
        let args = self::args(&launch(None, None), &spec);
        assert!(value_of(&args, "-incoming", "").is_empty());
        let defer = Launch {
            incoming: Incoming::Defer,
            ..launch(None, None)
        };
        assert_eq!(
            value_of(&self::args(&defer, &spec), "-incoming", ""),
            ["defer"]
        );
    }

    #[test]
    fn a_template_maps_its_ram_file_shared_and_a_clone_privately() {
        let spec = spec("/run/emberd/sb_1");
        let anonymous = args(&launch(None, None), &spec);
        assert!(value_of(&anonymous, "-object", "").is_empty());
        assert!(!value_of(&anonymous, "-M", "")[0].contains("memory-backend"));

        let ram = Path::new("/data/snapshots/py,1/guest.ram");
        let cases = [
            (GuestMemory::Shared(ram), "share=on"),
            (
                GuestMemory::Private {
                    path: ram,
                    read_only: false,
                },
                "share=off",
            ),
            (
                GuestMemory::Private {
                    path: ram,
                    read_only: true,
                },
                "share=off,readonly=on,rom=off",
            ),
        ];
        for (memory, mode) in cases {
            let args = args(
                &Launch {
                    memory,
                    ..launch(None, None)
                },
                &spec,
            );
            assert_eq!(
                value_of(&args, "-object", ""),
                [format!(
                    "memory-backend-file,id=ram,mem-path=/data/snapshots/py,,1/guest.ram,size=256M,{mode}"
                )]
            );
            assert!(value_of(&args, "-M", "")[0].ends_with(",memory-backend=ram"));
            assert_eq!(value_of(&args, "-m", ""), ["256M"]);
        }
    }
}
