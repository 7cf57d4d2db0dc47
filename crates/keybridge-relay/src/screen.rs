//! What the phone shows for a confirmation request.

use keybridge_proto::ConfirmationPayload;

/// A framed panel, one string per line, for the phone's screen.
pub fn confirmation_panel(p: &ConfirmationPayload, now_unix_s: u64) -> Vec<String> {
    let left_s = p.expires_at_unix_s.saturating_sub(now_unix_s);
    let mut lines = vec![
        "┌─ Confirm payment on your security device ─".to_owned(),
        format!("│ Amount   {}", p.amount),
        format!("│ Payee    {} ({})", p.payee_name, p.payee),
        format!("│ Order    {}", p.order_id),
    ];
    if !p.description.is_empty() {
        lines.push(format!("│          {}", p.description));
    }
    lines.push(format!("│ From     {}", p.payer));
    lines.push(format!("│ Expires  in {left_s} s"));
    lines.push("└───────────────────────────────────────────".to_owned());
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use keybridge_proto::{AccountId, Challenge, Currency, Money, TransactionId};

    #[test]
    fn shows_amount_payee_order_and_time_left() {
        let p = ConfirmationPayload {
            origin: "o".into(),
            transaction_id: TransactionId([0; 16]),
            challenge: Challenge([0; 32]),
            payer: AccountId::new("alice").unwrap(),
            payee: AccountId::new("shop").unwrap(),
            payee_name: "Corner Shop".into(),
            amount: Money::new(1234, Currency::from_code("CNY").unwrap()),
            order_id: "ORD-1".into(),
            description: "Books".into(),
            created_at_unix_s: 100,
            expires_at_unix_s: 220,
        };
        let text = confirmation_panel(&p, 110).join("\n");
        assert!(text.contains("CNY 12.34"), "{text}");
        assert!(text.contains("Corner Shop (shop)"), "{text}");
        assert!(text.contains("ORD-1"), "{text}");
        assert!(text.contains("in 110 s"), "{text}");
    }
}
