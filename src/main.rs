//! The `infercast` command line: parses arguments, loads config, runs a command,
//! and turns every error into one line on stderr with exit code 2.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::io::Write;

use infercast::app;
use infercast::auth::{self, Role};
use infercast::classify::classify_photos;
use infercast::config::{Config, ModelVariant};
use infercast::infer::InferenceWorker;
use infercast::telemetry;
use tokio_util::sync::CancellationToken;

/// Edge video analytics: RTSP cameras in, ImageNet labels and live video out.
///
/// With no camera and no config, runs the built-in demo camera.
#[derive(Parser)]
#[command(name = "infercast", version, about, subcommand_precedence_over_arg = true)]
struct Cli {
    /// TOML configuration file (see docs/config.md).
    #[arg(long, short = 'c', global = true, env = "INFERCAST_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP listen address (overrides `listen`), e.g. 0.0.0.0:8080.
    #[arg(long)]
    listen: Option<String>,
    /// Cameras: `rtsp://[user:pass@]host/path` or `NAME=URL` (added to the config's cameras).
    cameras: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Bearer tokens for `[auth]`.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Classify still photos: one JSON line with the top-5 classes per photo.
    Classify {
        /// Photos to classify (PNG, JPEG, BMP, WebP, GIF, TIFF).
        #[arg(required = true)]
        photos: Vec<PathBuf>,
        /// Model variant (overrides inference.model).
        #[arg(long)]
        model: Option<ModelVariant>,
        /// Intra-op threads for inference (overrides inference.threads).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Prints the OpenAPI 3.1 document of the HTTP API (what `GET /api/openapi.json` serves).
    Openapi,
}

#[derive(Subcommand)]
enum TokenAction {
    /// Prints a new random token on a line of its own, then the TOML lines to
    /// paste into the config (which hold only its SHA-256).
    New {
        /// What the token may do.
        #[arg(long, value_enum, default_value = "view")]
        role: Role,
        /// Who holds it (shown in logs); default `<role>-<first 6 hash digits>`.
        #[arg(long)]
        name: Option<String>,
        /// Limit the token to these cameras (repeat the flag); default all.
        #[arg(long = "camera")]
        cameras: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = cli.command.is_none();
    telemetry::init_logging(if serving { "info" } else { "warn" });
    match run(cli) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("infercast: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    match cli.command {
        Some(Command::Token { action: TokenAction::New { role, name, cameras } }) => {
            let token = auth::new_token();
            let sha256 = auth::token_sha256_hex(&token);
            let name = name.unwrap_or_else(|| format!("{}-{}", role.as_str(), &sha256[..6]));
            let mut out = std::io::stdout().lock();
            let cameras =
                if cameras.is_empty() { String::new() } else { format!("cameras = {}\n", toml::Value::from(cameras)) };
            writeln!(
                out,
                "{token}\n\n# Keep the token above secret; paste these lines into the config (only its SHA-256):\n\
                 [[auth.tokens]]\nname = {}\nrole = \"{}\"\nsha256 = \"{sha256}\"\n{cameras}",
                toml::Value::from(name.as_str()),
                role.as_str()
            )
            .map_err(|e| format!("cannot write the token: {e}"))?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Openapi) => {
            writeln!(std::io::stdout().lock(), "{}", infercast::api::openapi::json())
                .map_err(|e| format!("cannot write the document: {e}"))?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Classify { photos, model, threads }) => {
            if let Some(m) = model {
                config.inference.model = m;
            }
            if let Some(t) = threads {
                config.inference.threads = t;
            }
            config.validate()?;
            let worker = InferenceWorker::start(&config.inference).map_err(|e| e.to_string())?;
            let errors =
                classify_photos(&worker, config.inference.model.as_str(), &photos, &mut std::io::stdout().lock());
            for e in &errors {
                eprintln!("infercast: {e}");
            }
            Ok(if errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
        None => {
            if let Some(listen) = cli.listen {
                config.listen = listen;
            }
            config.arg_cameras = app::cameras_from_args(&cli.cameras);
            if config.cameras.is_empty() && config.arg_cameras.is_empty() {
                config.arg_cameras.push(app::demo_camera());
            }
            config.cameras.extend(config.arg_cameras.iter().cloned());
            serve(config)
        }
    }
}

fn serve(config: Config) -> Result<ExitCode, String> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let cancel = CancellationToken::new();
    let cameras: Vec<String> = config.cameras.iter().map(|c| c.name.clone()).collect();
    runtime.block_on(async {
        let on_signal = cancel.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            on_signal.cancel();
        });
        app::serve(config, cancel, |addr, https| {
            let scheme = if https { "https" } else { "http" };
            // Not eprintln!: it panics when stderr is a closed pipe.
            let _ = writeln!(
                std::io::stderr(),
                "infercast: serving {} on {scheme}://{addr}/ (labels: {scheme}://{addr}/api/labels)",
                cameras.join(", ")
            );
        })
        .await
        .map_err(|e| e.to_string())
    })?;
    runtime.shutdown_timeout(std::time::Duration::from_millis(300));
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
