//! Tests of the settings: defaults, layering and validation.

use super::*;

pub(crate) fn write_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("emberd.toml");
    std::fs::write(&file, text).unwrap();
    (dir, file)
}

#[test]
fn flags_win_over_the_file_and_the_file_over_defaults() {
    let (_dir, file) =
        write_file("vcpus = 2\nmemory-mib = 512\nboot-timeout = \"45s\"\nbackend = \"qemu\"\n");
    let args = ServeArgs {
        config: Some(file),
        memory_mib: Some(384),
        ..ServeArgs::default()
    };
    let settings = args.resolve().unwrap();
    assert_eq!(settings.vcpus, 2);
    assert_eq!(settings.memory_mib, 384);
    assert_eq!(settings.boot_timeout, Duration::from_secs(45));
    assert_eq!(settings.backend, BackendChoice::Qemu);
    assert_eq!(settings.addr, "127.0.0.1:7777".parse().unwrap());
}

#[test]
fn unknown_keys_in_the_file_are_rejected() {
    let (_dir, file) = write_file("vcpu = 2\n");
    let err = ServeArgs {
        config: Some(file.clone()),
        ..ServeArgs::default()
    }
    .resolve()
    .unwrap_err();
    assert!(err.to_string().contains("unknown field `vcpu`"), "{err}");
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );
}

#[test]
fn durations_accept_plain_seconds_and_units() {
    assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
    assert_eq!(
        parse_duration("1500ms").unwrap(),
        Duration::from_millis(1500)
    );
    assert!(parse_duration("soon").is_err());
}

#[test]
fn out_of_range_values_are_rejected() {
    let err = ServeArgs {
        vcpus: Some(0),
        ..ServeArgs::default()
    }
    .resolve()
    .unwrap_err();
    assert!(err.to_string().contains("vcpus"), "{err}");
}

#[test]
fn what_nobody_sets_takes_the_default() {
    let settings = ServeArgs::default().resolve().unwrap();
    assert_eq!(settings, Settings::default());
    assert_eq!(settings.pool_size, 2);
    assert_eq!(settings.boot_timeout, Duration::from_secs(30));
    assert_eq!(settings.shutdown_timeout, Duration::from_secs(10));
    assert_eq!(settings.backend, BackendChoice::Auto);
    assert_eq!(settings.accel, AccelChoice::Auto);
    assert_eq!(settings.data_dir, default_data_dir());
    assert_eq!(settings.vmm_user, "emberd-vmm");
}

#[test]
fn the_file_takes_every_key_in_its_own_syntax() {
    let (_dir, file) = write_file(
        "addr = \"0.0.0.0:8080\"\nbackend = \"firecracker\"\naccel = \"tcg\"\n\
         boot-timeout = 30\nshutdown-timeout = \"1500ms\"\npool-size = -1\n\
         snapshots = false\nskip-warm = true\nqemu-bin = \"/opt/qemu\"\n\
         vmm-user = \"nobody\"\n",
    );
    let settings = ServeArgs {
        config: Some(file),
        ..ServeArgs::default()
    }
    .resolve()
    .unwrap();
    assert_eq!(settings.addr, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(settings.backend, BackendChoice::Firecracker);
    assert_eq!(settings.accel, AccelChoice::Tcg);
    assert_eq!(settings.boot_timeout, Duration::from_secs(30));
    assert_eq!(settings.shutdown_timeout, Duration::from_millis(1500));
    assert_eq!(settings.pool_size, 0);
    assert!(!settings.snapshots);
    assert!(settings.skip_warm);
    assert_eq!(settings.qemu_bin, Some(PathBuf::from("/opt/qemu")));
    assert_eq!(settings.vmm_user, "nobody");
}

#[test]
fn a_wrong_value_in_the_file_names_its_key_and_the_file() {
    let (_dir, file) = write_file("memory-mib = \"lots\"\n");
    let err = ServeArgs {
        config: Some(file.clone()),
        ..ServeArgs::default()
    }
    .resolve()
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("memory-mib"), "{text}");
    assert!(text.contains(&file.display().to_string()), "{text}");
}

#[test]
fn a_work_dir_too_long_for_socket_paths_is_rejected() {
    let err = ServeArgs {
        work_dir: Some(PathBuf::from("/tmp").join("w".repeat(90))),
        ..ServeArgs::default()
    }
    .resolve()
    .unwrap_err();
    assert!(err.to_string().contains("too long"), "{err}");
}

#[test]
fn http_edge_settings_have_defaults_and_are_checked() {
    let settings = Settings::default();
    assert_eq!(settings.token_file, None);
    assert!(settings.allow_origin.is_empty());
    assert_eq!(settings.max_concurrent_requests, 64);
    assert_eq!(settings.header_read_timeout, Duration::from_secs(10));
    assert_eq!(settings.body_read_timeout, Duration::from_secs(60));

    let (_dir, file) = write_file(
        "token-file = \"/etc/emberd/tokens\"\nallow-origin = [\"https://dash.example\"]\n\
         max-concurrent-requests = 8\nheader-read-timeout = \"5s\"\nbody-read-timeout = 30\n",
    );
    let settings = ServeArgs {
        config: Some(file),
        ..ServeArgs::default()
    }
    .resolve()
    .unwrap();
    assert_eq!(
        settings.token_file,
        Some(PathBuf::from("/etc/emberd/tokens"))
    );
    assert_eq!(settings.allow_origin, ["https://dash.example"]);
    assert_eq!(settings.max_concurrent_requests, 8);
    assert_eq!(settings.header_read_timeout, Duration::from_secs(5));
    assert_eq!(settings.body_read_timeout, Duration::from_secs(30));

    for wrong in [
        ServeArgs {
            max_concurrent_requests: Some(0),
            ..ServeArgs::default()
        },
        ServeArgs {
            allow_origin: vec!["dash.example".into()],
            ..ServeArgs::default()
        },
        ServeArgs {
            allow_origin: vec!["https://dash.example/app".into()],
            ..ServeArgs::default()
        },
        ServeArgs {
            body_read_timeout: Some(Duration::ZERO),
            ..ServeArgs::default()
        },
    ] {
        assert!(wrong.resolve().is_err(), "{wrong:?}");
    }
}

#[test]
fn the_manager_gets_the_resolved_settings() {
    let settings = Settings {
        vcpus: 2,
        memory_mib: 512,
        overlay_mib: 128,
        pool_size: 3,
        pool_memory_mib: 1024,
        boot_timeout: Duration::from_secs(45),
        work_dir: PathBuf::from("/run/e"),
        data_dir: PathBuf::from("/data"),
        snapshots: true,
        skip_warm: true,
        ..Settings::default()
    };
    let config = settings.manager_config();
    assert_eq!(config.work_dir, PathBuf::from("/run/e"));
    assert_eq!(
        (config.vcpus, config.memory_mib, config.overlay_mib),
        (2, 512, 128)
    );
    assert_eq!((config.pool_size, config.pool_memory_mib), (3, 1024));
    assert_eq!(config.boot_timeout, Duration::from_secs(45));
    assert_eq!(config.snapshot_dir, Some(PathBuf::from("/data/snapshots")));
    assert!(!config.warm_templates_at_start);

    let config = Settings {
        snapshots: false,
        skip_warm: false,
        ..settings
    }
    .manager_config();
    assert_eq!(config.snapshot_dir, None);
    assert!(config.warm_templates_at_start);
}
