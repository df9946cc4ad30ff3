pub mod fake_daemon;
