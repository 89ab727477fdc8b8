//! The `wxgate` command: parse the command line, load the config, hand over to `app`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use wxgate::config::Config;
use wxgate::demo::DemoOptions;
use wxgate::sandbox::{Sandbox, SandboxConfig};
use wxgate::{AppId, Secret};

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
    /// The no-credentials tour: the sandbox plays WeChat, the gateway runs on SQLite.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        proxy: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9801")]
        sandbox: SocketAddr,
        /// Where the demo's SQLite file goes (reset at every start).
        #[arg(long, default_value = "data/demo")]
        data_dir: PathBuf,
    },
    /// The WeChat sandbox alone: a local stand-in for api.weixin.qq.com.
    Sandbox(SandboxArgs),
    /// Copy everything from the configured store into another (SQLite ⇄ Redis).
    Migrate {
        /// The destination: `sqlite:PATH` or `redis://[:PASSWORD@]HOST:PORT/DB`.
        #[arg(long)]
        to: String,
        /// Key prefix in a Redis destination.
        #[arg(long, default_value = "wxgate:")]
        to_key_prefix: String,
    },
}

/// The sandbox's credentials default to the demo ones (`wxgate demo` uses the same).
#[derive(clap::Args)]
struct SandboxArgs {
    #[arg(long, default_value = "127.0.0.1:9801")]
    listen: SocketAddr,
    /// The gateway's authorization-event URL, e.g. http://127.0.0.1:8080/wxgate/callback/component.
    #[arg(long)]
    callback: Option<String>,
    #[arg(long)]
    appid: Option<AppId>,
    #[arg(long)]
    appsecret: Option<String>,
    /// The message-verification token.
    #[arg(long)]
    token: Option<String>,
    #[arg(long)]
    encoding_aes_key: Option<String>,
    #[arg(long, default_value_t = 600)]
    ticket_interval_secs: u64,
    #[arg(long, default_value_t = 7200)]
    token_lifetime_secs: u64,
    /// How long a superseded token keeps working.
    #[arg(long, default_value_t = 300)]
    grace_secs: u64,
    /// Keep refresh tokens unchanged on refresh (WeChat's usual behaviour; the default rotates them).
    #[arg(long)]
    no_rotate: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Some(Command::Demo { proxy, admin, sandbox, data_dir }) => {
            wxgate::demo::run(&DemoOptions { proxy, admin, sandbox, data_dir })
                .context("demo")
                .map(|()| ExitCode::SUCCESS)
        }
        Some(Command::Sandbox(args)) => run_sandbox(args),
        Some(Command::Migrate { to, to_key_prefix }) => {
            with_config(&cli.config, |config| migrate(config, &to, &to_key_prefix))
        }
        Some(Command::Check) => with_config(&cli.config, |config| {
            println!("{}", config.masked());
            eprintln!("wxgate: {} is valid", cli.config.display());
            Ok(())
        }),
        None => run(&cli.config),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wxgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the config, or exits 64 naming every problem.
fn with_config(path: &std::path::Path, f: impl FnOnce(&Config) -> anyhow::Result<()>) -> anyhow::Result<ExitCode> {
    match Config::load(path) {
        Ok(config) => f(&config).map(|()| ExitCode::SUCCESS),
        Err(e) => Ok(config_error(path, &e)),
    }
}

fn config_error(path: &std::path::Path, e: &wxgate::config::ConfigError) -> ExitCode {
    eprintln!("wxgate: invalid configuration ({}):\n{e}", path.display());
    ExitCode::from(EXIT_CONFIG)
}

fn migrate(config: &Config, to: &str, key_prefix: &str) -> anyhow::Result<()> {
    use wxgate::config::StoreConfig;
    let destination = if let Some(path) = to.strip_prefix("sqlite:") {
        StoreConfig::Sqlite { path: PathBuf::from(path) }
    } else if ["redis://", "rediss://", wxgate::store::SENTINEL_SCHEME].iter().any(|s| to.starts_with(s)) {
        let options = wxgate::store::RedisOptions::default();
        StoreConfig::Redis { url: Secret::new(to), key_prefix: key_prefix.to_owned(), options }
    } else {
        anyhow::bail!("--to takes sqlite:PATH, redis://HOST:PORT/DB or redis+sentinel://HOST:PORT/SERVICE");
    };
    let rt = tokio::runtime::Runtime::new().context("runtime")?;
    rt.block_on(async {
        let component = &config.namespace;
        let from = wxgate::app::open_store(&config.store, component).await.context("the configured store")?;
        let to = wxgate::app::open_store(&destination, component).await.context("the destination store")?;
        let copied = wxgate::store::migrate::copy(&from, &to, component).await.context("copy")?;
        println!(
            "copied from {} to {}: {} authorizers, ticket: {}, component token: {}, pending events: {}",
            from.backend(),
            to.backend(),
            copied.authorizers,
            copied.ticket,
            copied.component_token,
            copied.pending_events
        );
        Ok(())
    })
}

fn run_sandbox(args: SandboxArgs) -> anyhow::Result<ExitCode> {
    let demo = SandboxConfig::demo();
    let config = SandboxConfig {
        component_appid: args.appid.unwrap_or(demo.component_appid),
        component_appsecret: args.appsecret.map(Secret::new).unwrap_or(demo.component_appsecret),
        token: args.token.map(Secret::new).unwrap_or(demo.token),
        encoding_aes_key: args.encoding_aes_key.map(Secret::new).unwrap_or(demo.encoding_aes_key),
        callback_url: args.callback,
        ticket_interval: Duration::from_secs(args.ticket_interval_secs.max(1)),
        token_lifetime: Duration::from_secs(args.token_lifetime_secs.max(1)),
        grace: Duration::from_secs(args.grace_secs),
        rotate_refresh_tokens: !args.no_rotate,
        ..demo
    };
    let rt = tokio::runtime::Runtime::new().context("runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let sandbox = Sandbox::start(config, listener).await.context("sandbox")?;
        eprintln!(
            "wxgate sandbox: listening on {} (control routes under /sandbox/); Ctrl-C stops it",
            sandbox.base_url()
        );
        tokio::signal::ctrl_c().await.context("signal")?;
        sandbox.shutdown();
        Ok(ExitCode::SUCCESS)
    })
}

/// Runs the gateway; SIGHUP reads `path` again.
fn run(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    match Config::load_reloadable(path) {
        Ok((config, source)) => {
            wxgate::app::run(&config, Some(source)).context("cannot start")?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(config_error(path, &e)),
    }
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
    // The hint lets records above the filter's level be dropped before they are built at all.
    let hint = filter.max_level_hint().unwrap_or(tracing_subscriber::filter::LevelFilter::TRACE);
    let no_pingora_detail = tracing_subscriber::filter::filter_fn(|meta| {
        !meta.target().starts_with("pingora") || *meta.level() <= tracing::Level::INFO
    })
    .with_max_level_hint(hint);
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    tracing_subscriber::registry().with(fmt.with_filter(filter).with_filter(no_pingora_detail)).init();
}
