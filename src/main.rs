//! The `wxgate` command: parse the command line, load the config, hand over to `app`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use wxgate::config::Config;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for a configuration problem (EX_USAGE, as linkerd2-proxy does).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(name = "wxgate", version, about = "A reverse-proxy gateway for WeChat Open Platform third-party platforms")]
struct Cli {
    /// The configuration file.
    #[arg(long, global = true, env = "WXGATE_CONFIG", default_value = "conf/wxgate.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config and print it with secrets masked.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("wxgate: invalid configuration ({}):\n{e}", cli.config.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = match cli.command {
        Some(Command::Check) => {
            println!("{}", config.masked());
            eprintln!("wxgate: {} is valid", cli.config.display());
            Ok(())
        }
        None => run(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wxgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: &Config) -> anyhow::Result<()> {
    wxgate::app::run(config).context("cannot start")
}

/// Logs to stderr, filtered by `WXGATE_LOG` (e.g. `info`, `wxgate=debug`); pingora's own `log`
/// records arrive through tracing's log bridge.
///
/// pingora's debug and trace records print whole request headers and URIs, which carry client
/// keys and tokens, so pingora is held at `info` whatever `WXGATE_LOG` asks for.
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let filter = tracing_subscriber::EnvFilter::try_from_env("WXGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let no_pingora_detail = tracing_subscriber::filter::filter_fn(|meta| {
        !meta.target().starts_with("pingora") || *meta.level() <= tracing::Level::INFO
    });
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    tracing_subscriber::registry().with(fmt.with_filter(filter).with_filter(no_pingora_detail)).init();
}
