//! The card holder: what the device's display shows and whether its user approves.
//!
//! The applet describes a payment as a [`Screen`] and hands it to a [`Holder`];
//! it never prints or reads anything itself. The implementations here print the
//! screen as a framed panel to stderr, each line prefixed with `[card]`:
//!
//! ```text
//! [card] +--------------------------------+
//! [card] | Pay CNY 12.34                  |
//! [card] | to Corner Bookshop (bookshop)  |
//! [card] | order ORD-1 Two books          |
//! [card] | from alice                     |
//! [card] | expires in 118 s               |
//! [card] | via keybridge.example          |
//! [card] +--------------------------------+
//! ```

use std::io::BufRead;

use keybridge_proto::{AccountId, ConfirmationPayload, Money};

/// What the device shows before asking for approval: every field a holder needs
/// to know what they sign. Built only from a payload that decoded, so the text
/// has no control or bidirectional-override characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Screen {
    pub amount: Money,
    pub payee_name: String,
    pub payee: AccountId,
    pub order_id: String,
    pub description: String,
    pub payer: AccountId,
    /// The server that asks: a payment from another server is a phishing sign.
    pub origin: String,
    pub expires_at_unix_s: u64,
    /// The time the screen was made, injected by the caller (the applet reads no clock).
    pub now_unix_s: u64,
}

impl Screen {
    /// Characters per rendered line.
    pub const WIDTH: usize = 48;

    pub fn from_payload(payload: &ConfirmationPayload, now_unix_s: u64) -> Screen {
        Screen {
            amount: payload.amount,
            payee_name: payload.payee_name.clone(),
            payee: payload.payee.clone(),
            order_id: payload.order_id.clone(),
            description: payload.description.clone(),
            payer: payload.payer.clone(),
            origin: payload.origin.clone(),
            expires_at_unix_s: payload.expires_at_unix_s,
            now_unix_s,
        }
    }

    /// The display's lines, top to bottom.
    pub fn lines(&self) -> Vec<String> {
        let order = if self.description.is_empty() {
            format!("order {}", self.order_id)
        } else {
            format!("order {} {}", self.order_id, self.description)
        };
        let expiry = match self.expires_at_unix_s.checked_sub(self.now_unix_s) {
            Some(left_s) if left_s > 0 => format!("expires in {left_s} s"),
            _ => format!(
                "EXPIRED {} s ago",
                self.now_unix_s.saturating_sub(self.expires_at_unix_s)
            ),
        };
        vec![
            format!("Pay {}", self.amount),
            format!("to {} ({})", self.payee_name, self.payee),
            order,
            format!("from {}", self.payer),
            expiry,
            format!("via {}", self.origin),
        ]
    }

    /// The lines as a framed panel at most [`Screen::WIDTH`] characters wide
    /// (longer lines wrap at spaces), each line prefixed with `[card] `.
    pub fn render(&self) -> String {
        let lines: Vec<String> = self
            .lines()
            .iter()
            .flat_map(|line| wrap(line, Screen::WIDTH))
            .collect();
        let width = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0);
        let rule = format!("[card] +{}+\n", "-".repeat(width + 2));
        let mut out = rule.clone();
        for line in &lines {
            let pad = width - line.chars().count();
            out.push_str(&format!("[card] | {line}{} |\n", " ".repeat(pad)));
        }
        out.push_str(&rule);
        out
    }
}

/// Splits `line` into pieces of at most `width` characters, at spaces where
/// possible.
fn wrap(line: &str, width: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for word in line.split(' ') {
        let mut word: Vec<char> = word.chars().collect();
        let current_len = current.chars().count();
        if current_len > 0 && current_len + 1 + word.len() <= width {
            current.push(' ');
            current.extend(word);
            continue;
        }
        if current_len > 0 {
            out.push(std::mem::take(&mut current));
        }
        while word.len() > width {
            out.push(word.drain(..width).collect());
        }
        current = word.into_iter().collect();
    }
    out.push(current);
    out
}

/// The person holding the card, as the applet sees them.
pub trait Holder {
    /// Shows the payment on the device's display.
    fn show(&mut self, screen: &Screen);
    /// Asks whether to sign what [`Holder::show`] displayed. `false` declines.
    fn confirm(&mut self, screen: &Screen) -> bool;
}

fn print_screen(screen: &Screen) {
    say_inline!("{}", screen.render());
}

/// Approves every payment (tests, demos): prints the screen and says so.
#[derive(Debug, Clone, Copy, Default)]
pub struct AutoApprove;

impl Holder for AutoApprove {
    fn show(&mut self, screen: &Screen) {
        print_screen(screen);
    }

    fn confirm(&mut self, _screen: &Screen) -> bool {
        say!("[card] approved (policy: approve)");
        true
    }
}

/// Approves every payment and prints nothing: for load generation
/// (`keybridge bench`), where thousands of screens a second would drown the
/// bench's own output and cost the machine more than the card's signing does.
/// The screen is still built (by the applet) from the payload it signs.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuietApprove;

impl Holder for QuietApprove {
    fn show(&mut self, _screen: &Screen) {}

    fn confirm(&mut self, _screen: &Screen) -> bool {
        true
    }
}

/// Declines every payment (tests of the decline path).
#[derive(Debug, Clone, Copy, Default)]
pub struct AutoDecline;

impl Holder for AutoDecline {
    fn show(&mut self, screen: &Screen) {
        print_screen(screen);
    }

    fn confirm(&mut self, _screen: &Screen) -> bool {
        say!("[card] declined (policy: decline)");
        false
    }
}

/// Asks on the terminal: prints the screen to stderr and reads `y`/`n` from
/// stdin. Anything but `y`/`yes`, including end of input, declines.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prompt;

impl Holder for Prompt {
    fn show(&mut self, screen: &Screen) {
        print_screen(screen);
    }

    fn confirm(&mut self, _screen: &Screen) -> bool {
        say_inline!("[card] approve this payment? [y/N] ");
        let mut answer = String::new();
        let approved = match std::io::stdin().lock().read_line(&mut answer) {
            Ok(0) | Err(_) => false,
            Ok(_) => matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"),
        };
        say!("[card] {}", if approved { "approved" } else { "declined" });
        approved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keybridge_proto::Currency;

    fn screen(now_unix_s: u64) -> Screen {
        Screen {
            amount: Money::new(1234, Currency::from_code("CNY").unwrap()),
            payee_name: "Corner Bookshop".into(),
            payee: AccountId::new("bookshop").unwrap(),
            order_id: "ORD-1".into(),
            description: "Two books".into(),
            payer: AccountId::new("alice").unwrap(),
            origin: "keybridge.example".into(),
            expires_at_unix_s: 1_700_000_120,
            now_unix_s,
        }
    }

    #[test]
    fn the_automatic_holders_answer_without_asking() {
        let shown = screen(1_700_000_000);
        assert!(QuietApprove.confirm(&shown));
        assert!(AutoApprove.confirm(&shown));
        assert!(!AutoDecline.confirm(&shown));
    }

    /// The display shows every field the holder needs, with expiry relative to
    /// the injected time.
    #[test]
    fn lines_show_the_whole_payment() {
        assert_eq!(
            screen(1_700_000_002).lines(),
            [
                "Pay CNY 12.34",
                "to Corner Bookshop (bookshop)",
                "order ORD-1 Two books",
                "from alice",
                "expires in 118 s",
                "via keybridge.example",
            ]
        );
        assert_eq!(screen(1_700_000_125).lines()[4], "EXPIRED 5 s ago");
    }

    #[test]
    fn long_lines_wrap_at_spaces() {
        assert_eq!(wrap("ab cd ef", 5), ["ab cd", "ef"]);
        assert_eq!(wrap("abcdefgh ij", 3), ["abc", "def", "gh", "ij"]);
        assert_eq!(wrap("", 3), [""]);
        let mut s = screen(0);
        s.description = "word ".repeat(40);
        let text = s.render();
        assert!(text
            .lines()
            .all(|l| l.chars().count() <= "[card] | ".len() + Screen::WIDTH + 2));
        assert!(text.lines().count() > 8);
    }

    #[test]
    fn render_frames_every_line() {
        let text = screen(1_700_000_002).render();
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(rows.len(), 8);
        assert!(rows.iter().all(|r| r.starts_with("[card] ")));
        let width = rows[0].chars().count();
        assert!(rows.iter().all(|r| r.chars().count() == width));
        assert!(rows[1].contains("Pay CNY 12.34"));
    }
}
