//! OpenAPI schemas (feature `openapi`) for the newtypes whose JSON form is a
//! string with rules: written by hand because their serde impls are too.
//! The derived schemas of [`crate::api`] refer to these by name.

use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use crate::{AccountId, Currency, TransactionId};

fn string(description: &str, pattern: &str, example: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .description(Some(description))
        .pattern(Some(pattern))
        .examples([example])
        .into()
}

impl PartialSchema for TransactionId {
    fn schema() -> RefOr<Schema> {
        string(
            "A transaction id: 128 random bits as 32 lower-case hex digits.",
            "^[0-9a-f]{32}$",
            "3f2a9c0b1d4e5f60718293a4b5c6d7e8",
        )
    }
}
impl ToSchema for TransactionId {}

impl PartialSchema for AccountId {
    fn schema() -> RefOr<Schema> {
        string(
            "An account id: 1 to 34 characters from a-z, A-Z, 0-9, `.`, `_`, `-`, `:`.",
            "^[A-Za-z0-9._:-]{1,34}$",
            "alice",
        )
    }
}
impl ToSchema for AccountId {}

impl PartialSchema for Currency {
    fn schema() -> RefOr<Schema> {
        string(
            "An ISO 4217 alphabetic currency code the server knows (it fixes the minor-unit exponent).",
            "^[A-Z]{3}$",
            "CNY",
        )
    }
}
impl ToSchema for Currency {}
