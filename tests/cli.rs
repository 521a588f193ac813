//! `infercast classify` as a user runs it: output format, and every bad input
//! giving one clear line on stderr, exit code 2, and no panic.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::process::Command;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn infercast(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_infercast"));
    cmd.args(args).env_remove("ORT_DYLIB_PATH").env_remove("INFERCAST_CONFIG").env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("infercast runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Exit 2, exactly one stderr line that contains every `needles`, no panic.
fn assert_clear_error(run: &Run, needles: &[&str]) {
    assert_eq!(run.code, 2, "exit code; stderr: {}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one line on stderr, got: {}", run.stderr);
    assert!(lines[0].starts_with("infercast: "), "{}", lines[0]);
    for n in needles {
        assert!(lines[0].contains(n), "`{n}` not in: {}", lines[0]);
    }
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}

fn config_file(dir: &Path, body: &str) -> String {
    let p = dir.join("infercast.toml");
    std::fs::write(&p, body).expect("write config");
    p.to_string_lossy().into_owned()
}

#[test]
fn classify_prints_one_json_line_per_photo() {
    let coffee = common::skimage_photo("coffee.png");
    let chelsea = common::skimage_photo("chelsea.png");
    let run = infercast(&["classify", coffee.to_str().unwrap(), chelsea.to_str().unwrap()], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<serde_json::Value> =
        run.stdout.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["path"], coffee.to_str().unwrap());
    let top5 = lines[0]["top5"].as_array().expect("top5 array");
    assert_eq!(top5.len(), 5);
    assert_eq!(top5[0]["label"], "espresso");
    assert_eq!(top5[0]["class_id"], 967);
    assert!(top5[0]["score"].as_f64().unwrap() >= 0.5);
    assert!(lines[0]["infer_ms"].as_f64().unwrap() > 0.0);
    let cat = lines[1]["top5"][0]["class_id"].as_u64().unwrap();
    assert!((281..=285).contains(&cat), "chelsea top-1 {cat}");
}

#[test]
fn missing_photo_is_named_and_the_others_still_classified() {
    let coffee = common::skimage_photo("coffee.png");
    let run = infercast(&["classify", "/nonexistent/cat.jpg", coffee.to_str().unwrap()], &[]);
    assert_clear_error(&run, &["/nonexistent/cat.jpg", "no such file"]);
    assert_eq!(run.stdout.lines().count(), 1, "coffee is still classified");
    assert!(run.stdout.contains("espresso"));
}

#[test]
fn a_file_that_is_not_an_image_is_refused() {
    let dir = common::scratch_dir("not_an_image");
    let fake = dir.join("photo.jpg");
    std::fs::write(&fake, "this is a text file, not a JPEG\n").unwrap();
    let run = infercast(&["classify", fake.to_str().unwrap()], &[]);
    assert_clear_error(&run, &["photo.jpg", "not an image"]);
    let truncated = dir.join("truncated.png");
    let png = std::fs::read(common::skimage_photo("coffee.png")).unwrap();
    std::fs::write(&truncated, &png[..png.len() / 3]).unwrap();
    let run = infercast(&["classify", truncated.to_str().unwrap()], &[]);
    assert_clear_error(&run, &["truncated.png", "not an image"]);
}

#[test]
fn a_one_pixel_image_is_classified() {
    let dir = common::scratch_dir("one_pixel");
    let p = dir.join("1x1.png");
    image::RgbImage::from_pixel(1, 1, image::Rgb([200, 30, 30])).save(&p).unwrap();
    let run = infercast(&["classify", p.to_str().unwrap()], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let line: serde_json::Value = serde_json::from_str(run.stdout.trim()).expect("JSON");
    assert_eq!(line["top5"].as_array().unwrap().len(), 5);
}

#[test]
fn a_20000_pixel_square_image_is_refused_before_decoding() {
    let huge = common::fixture("huge-20000x20000.png");
    let run = infercast(&["classify", huge.to_str().unwrap()], &[]);
    assert_clear_error(&run, &["huge-20000x20000.png", "20000x20000 pixels", "100 megapixels"]);
}

#[test]
fn missing_onnx_runtime_says_how_to_set_up() {
    let coffee = common::skimage_photo("coffee.png");
    let run =
        infercast(&["classify", coffee.to_str().unwrap()], &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")]);
    assert_clear_error(&run, &["/nonexistent/libonnxruntime.so", "ORT_DYLIB_PATH", "no such file", "scripts/setup"]);
}

#[test]
fn a_library_that_is_not_onnx_runtime_is_refused() {
    let coffee = common::skimage_photo("coffee.png");
    let libz = ["/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("libz present on Debian");
    let run = infercast(&["classify", coffee.to_str().unwrap()], &[("ORT_DYLIB_PATH", libz)]);
    assert_clear_error(&run, &["libz.so", "OrtGetApiBase", "scripts/setup"]);
}

#[test]
fn an_old_onnx_runtime_is_refused_with_its_version() {
    let coffee = common::skimage_photo("coffee.png");
    let old = common::fixture("onnxruntime-1.20.1/libonnxruntime.so.1.20.1");
    let run = infercast(&["classify", coffee.to_str().unwrap()], &[("ORT_DYLIB_PATH", old.to_str().unwrap())]);
    assert_clear_error(&run, &["libonnxruntime.so.1.20.1", "1.20.1", "scripts/setup"]);
}

#[test]
fn missing_model_file_says_how_to_export_it() {
    let dir = common::scratch_dir("missing_model");
    let cfg = config_file(&dir, "[inference]\nmodel_path = \"/nonexistent/model.onnx\"\n");
    let coffee = common::skimage_photo("coffee.png");
    let run = infercast(&["--config", &cfg, "classify", coffee.to_str().unwrap()], &[]);
    assert_clear_error(&run, &["/nonexistent/model.onnx", "not found", "scripts/setup"]);
}

#[test]
fn corrupt_model_file_is_refused() {
    let dir = common::scratch_dir("corrupt_model");
    let model = std::fs::read(common::repo().join("models/efficientnet-lite0-int8.onnx")).expect("model exported");
    let bad = dir.join("corrupt.onnx");
    std::fs::write(&bad, &model[..model.len() / 2]).unwrap();
    let cfg = config_file(&dir, &format!("[inference]\nmodel_path = {:?}\n", bad.to_str().unwrap()));
    let coffee = common::skimage_photo("coffee.png");
    let run = infercast(&["--config", &cfg, "classify", coffee.to_str().unwrap()], &[]);
    assert_clear_error(&run, &["corrupt.onnx", "not a usable ONNX model"]);
}

#[test]
fn labels_that_do_not_match_the_model_are_refused() {
    let dir = common::scratch_dir("labels_mismatch");
    let labels = std::fs::read_to_string(common::repo().join("models/imagenet_classes.txt")).expect("labels written");
    let short: Vec<&str> = labels.lines().take(999).collect();
    let path = dir.join("labels.txt");
    std::fs::write(&path, short.join("\n")).unwrap();
    let cfg = config_file(&dir, &format!("[inference]\nlabels_path = {:?}\n", path.to_str().unwrap()));
    let coffee = common::skimage_photo("coffee.png");
    let run = infercast(&["--config", &cfg, "classify", coffee.to_str().unwrap()], &[]);
    assert_clear_error(&run, &["labels.txt", "999 names", "1000 classes"]);
}

#[test]
fn malformed_config_names_line_and_column() {
    let dir = common::scratch_dir("malformed_config");
    let cfg = config_file(&dir, "[inference]\nthreads = 1\nmodle = \"fp32\"\n");
    let coffee = common::skimage_photo("coffee.png");
    let run = infercast(&["--config", &cfg, "classify", coffee.to_str().unwrap()], &[]);
    assert_clear_error(&run, &["infercast.toml", "line 3, column 1", "unknown field `modle`"]);
}

/// A log collector that dies (stderr a closed pipe) must not keep SIGTERM
/// from stopping the server: log lines are dropped, not panicked over.
#[test]
fn sigterm_stops_the_server_after_its_stderr_reader_died() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};
    let mut child = Command::new(env!("CARGO_BIN_EXE_infercast"))
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("INFERCAST_CONFIG")
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("infercast starts");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let t = Instant::now();
    while !line.contains("serving") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0 && t.elapsed() < Duration::from_secs(60), "no serving line");
    }
    drop(stderr); // the reader dies: every later log line hits a broken pipe
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("infercast still ran 5 s after SIGTERM with its stderr closed");
}
