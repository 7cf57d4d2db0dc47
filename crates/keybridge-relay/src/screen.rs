//! What the phone shows for a confirmation request: one framed panel with
//! what the card will sign (amount with its currency, payee name and
//! account, order, payer) and the time left, then a time-left line while the
//! holder and the card are busy. Pure functions of the payload and `now`.

use keybridge_proto::ConfirmationPayload;

/// "1:58", "0:07"; "expired" at or past the end.
pub fn time_left(expires_at_unix_s: u64, now_unix_s: u64) -> String {
    let left_s = expires_at_unix_s.saturating_sub(now_unix_s);
    if left_s == 0 {
        return "expired".to_owned();
    }
    format!("{}:{:02}", left_s / 60, left_s % 60)
}

/// The wall-clock time of `unix_s` as `HH:MM:SS UTC`.
fn utc_clock(unix_s: u64) -> String {
    let day_s = unix_s % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        day_s / 3600,
        day_s % 3600 / 60,
        day_s % 60
    )
}

/// A framed panel, one string per line, for the phone's screen.
pub fn confirmation_panel(p: &ConfirmationPayload, now_unix_s: u64) -> Vec<String> {
    let mut lines = vec![
        "┌─ Confirm payment on your security device ─".to_owned(),
        format!("│ Pay      {}", p.amount),
        format!("│ To       {}", p.payee_name),
        format!("│ Account  {}", p.payee),
        format!("│ Order    {}", p.order_id),
    ];
    if !p.description.is_empty() {
        lines.push(format!("│          {}", p.description));
    }
    lines.push(format!("│ From     {}", p.payer));
    lines.push(format!(
        "│ Time     {} left (until {})",
        time_left(p.expires_at_unix_s, now_unix_s),
        utc_clock(p.expires_at_unix_s)
    ));
    lines.push("│ Check the card's display shows the same amount and payee.".to_owned());
    lines.push("└───────────────────────────────────────────".to_owned());
    lines
}

/// The line repeated while waiting for the holder or the card.
pub fn time_left_line(p: &ConfirmationPayload, now_unix_s: u64) -> String {
    format!(
        "{} to {}: {} left",
        p.amount,
        p.payee_name,
        time_left(p.expires_at_unix_s, now_unix_s)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use keybridge_proto::{AccountId, Challenge, Currency, Money, TransactionId};

    fn payload(amount_minor: u64, currency: &str) -> ConfirmationPayload {
        ConfirmationPayload {
            origin: "o".into(),
            transaction_id: TransactionId([0; 16]),
            challenge: Challenge([0; 32]),
            payer: AccountId::new("alice").unwrap(),
            payee: AccountId::new("shop").unwrap(),
            payee_name: "Corner Shop".into(),
            amount: Money::new(amount_minor, Currency::from_code(currency).unwrap()),
            order_id: "ORD-1".into(),
            description: "Books".into(),
            created_at_unix_s: 100,
            expires_at_unix_s: 220,
        }
    }

    #[test]
    fn shows_amount_with_currency_payee_name_and_account_order_and_time_left() {
        let text = confirmation_panel(&payload(1234, "CNY"), 110).join("\n");
        assert!(text.contains("│ Pay      CNY 12.34"), "{text}");
        assert!(text.contains("│ To       Corner Shop"), "{text}");
        assert!(text.contains("│ Account  shop"), "{text}");
        assert!(text.contains("│ Order    ORD-1"), "{text}");
        assert!(text.contains("│          Books"), "{text}");
        assert!(text.contains("1:50 left (until 00:03:40 UTC)"), "{text}");
    }

    #[test]
    fn amounts_follow_their_currency_exponent() {
        let yen = confirmation_panel(&payload(1234, "JPY"), 110).join("\n");
        assert!(yen.contains("JPY 1234"), "{yen}");
        let line = time_left_line(&payload(5, "EUR"), 215);
        assert_eq!(line, "EUR 0.05 to Corner Shop: 0:05 left");
    }

    #[test]
    fn time_left_counts_down_to_expired() {
        let cases = [
            (220, 100, "2:00"),
            (220, 219, "0:01"),
            (220, 220, "expired"),
            (220, 500, "expired"),
        ];
        for (expires, now, want) in cases {
            assert_eq!(time_left(expires, now), want, "{expires} {now}");
        }
    }
}
