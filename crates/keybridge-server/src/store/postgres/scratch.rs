//! Throwaway databases on a PostgreSQL server, for the tests of this crate
//! and of the binaries.
//!
//! [`SERVER_ENV`] names the server as a `key=value` connection string for an
//! administrator, without a database name (`scripts/test` starts a
//! throwaway cluster and sets it: `host=127.0.0.1 port=55432
//! user=postgres`). Each [`database`] call creates a fresh database there,
//! so tests never see each other's rows.

use tokio_postgres::NoTls;

use super::super::StoreError;

pub const SERVER_ENV: &str = "KEYBRIDGE_TEST_POSTGRES";
/// The CA of the test server's TLS certificate (`scripts/postgres` makes
/// one), for the tests of TLS to the database.
pub const CA_ENV: &str = "KEYBRIDGE_TEST_POSTGRES_CA";

/// A new empty database on the server [`SERVER_ENV`] names, as a connection
/// string; `Ok(None)` when the variable is not set.
pub async fn database() -> Result<Option<String>, StoreError> {
    let Ok(server) = std::env::var(SERVER_ENV) else {
        return Ok(None);
    };
    let name = format!(
        "kb_test_{}",
        hex::encode(crate::random::bytes::<8>().map_err(|e| StoreError::Backend(e.to_string()))?)
    );
    let admin = format!("{server} dbname=postgres");
    let (client, connection) = tokio_postgres::connect(&admin, NoTls)
        .await
        .map_err(|e| StoreError::Backend(format!("{SERVER_ENV}: {e}")))?;
    let connection = tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .map_err(|e| StoreError::Backend(format!("creating a test database: {e}")))?;
    drop(client);
    let _ = connection.await;
    Ok(Some(format!("{server} dbname={name}")))
}

/// Like [`database`], for tests: `None` (after saying so loudly) when no
/// server is configured, except under `CI=true`, where that fails the test.
pub async fn database_or_skip() -> Option<String> {
    match database().await {
        Ok(Some(url)) => Some(url),
        Ok(None) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{SERVER_ENV} is not set: CI must start PostgreSQL (scripts/test does)")
        }
        Ok(None) => {
            eprintln!("\n!!!!!!!! SKIPPED (not CI) !!!!!!!!\n{SERVER_ENV} is not set: no PostgreSQL to test against (scripts/test starts one)\n");
            None
        }
        Err(e) => panic!("{e}"),
    }
}
