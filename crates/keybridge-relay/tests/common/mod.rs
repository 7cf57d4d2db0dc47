//! The server side of the relay tests: a real server in-process (loopback
//! HTTP and WebSocket) with alice and a shop, its admin and one terminal.

use std::path::Path;

use keybridge_proto::api::CreateAccount;
use keybridge_proto::{AccountId, Currency};
use keybridge_terminal::Client;

pub struct Bank {
    pub server: keybridge_server::RunningServer,
    pub admin: Client,
    pub terminal: Client,
}

/// A server keeping its data in `data_dir`; confirmations live `ttl_s` (the
/// sweeper looks every 200 ms), or the default when `None`. Alice opens with
/// `alice_minor` CNY minor units, the shop ("Corner Shop") with nothing.
pub async fn bank(data_dir: &Path, ttl_s: Option<u64>, alice_minor: u64) -> Bank {
    let token = "admin-token-for-relay-tests".to_owned();
    let mut config = keybridge_server::ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        data_dir.to_path_buf(),
        token.clone(),
    );
    if let Some(ttl_s) = ttl_s {
        config.confirmation_ttl_s = ttl_s;
        config.sweep_interval_ms = 200;
    }
    std::fs::create_dir_all(&config.data_dir).unwrap();
    let server = keybridge_server::start(config).await.unwrap();
    let url = format!("http://{}", server.addr);
    let admin = Client::new(&url, &token).unwrap();
    let cny = Currency::from_code("CNY").unwrap();
    for (id, name, balance) in [("alice", "Alice", alice_minor), ("shop", "Corner Shop", 0)] {
        admin
            .create_account(&CreateAccount {
                id: AccountId::new(id).unwrap(),
                display_name: name.into(),
                currency: cny,
                opening_balance_minor: balance,
            })
            .await
            .unwrap();
    }
    let t = admin.create_terminal("till").await.unwrap();
    let terminal = Client::new(&url, &t.api_key).unwrap();
    Bank {
        server,
        admin,
        terminal,
    }
}

/// A loopback port to listen on later (below the ephemeral range).
pub fn free_port() -> u16 {
    keybridge_transport::port::listen_port().unwrap()
}
