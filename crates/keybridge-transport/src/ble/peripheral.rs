//! The device's side: reassemble a request, run it, notify the answer.
//!
//! While the handler runs (the holder reads the amount and decides), a helper
//! thread notifies KEEPALIVE every [`PeripheralOptions::keepalive_interval_ms`]
//! so the phone keeps waiting; the first one goes out at once, telling the
//! phone its request arrived whole. A CANCEL written meanwhile raises the
//! flag in [`RequestContext::cancel`]; the handler decides what it means (the
//! card turns it into a decline if the holder has not confirmed yet).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::frame::{Cmd, ErrorCode, KeepaliveStatus, Message};
use super::reassembly::{Reassembler, REASSEMBLY_TIMEOUT_MS_DEFAULT};
use super::{GattServerIo, Notifier, ServerEvent};
use crate::channel::LinkError;

#[derive(Debug, Clone, Copy)]
pub struct PeripheralOptions {
    pub keepalive_interval_ms: u64,
    /// How long a partial request may wait for its next fragment. Longer than
    /// the phone's idle timeout, so the phone's retransmission (a new INIT)
    /// normally replaces a stalled request before the device reports it.
    pub reassembly_timeout_ms: u64,
    /// How often the engine looks at the clock while idle.
    pub poll_ms: u64,
}

impl Default for PeripheralOptions {
    fn default() -> PeripheralOptions {
        PeripheralOptions {
            keepalive_interval_ms: 200,
            reassembly_timeout_ms: REASSEMBLY_TIMEOUT_MS_DEFAULT,
            poll_ms: 100,
        }
    }
}

/// What the handler of one request can see and say.
#[derive(Debug)]
pub struct RequestContext<'a> {
    /// Raised when the phone sent CANCEL after this request.
    pub cancel: &'a AtomicBool,
    /// The KEEPALIVE status byte to send: [`KeepaliveStatus::byte`].
    pub keepalive_status: &'a AtomicU8,
}

impl RequestContext<'_> {
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    pub fn set_status(&self, status: KeepaliveStatus) {
        self.keepalive_status.store(status.byte(), Ordering::SeqCst);
    }
}

fn notify_message(
    notifier: &mut dyn Notifier,
    message: &Message,
    io: &dyn GattServerIo,
) -> Result<(), LinkError> {
    let fragments = message
        .fragments(io.fragment_len())
        .map_err(|_| LinkError::ResponseTooLarge(super::frame::MESSAGE_LEN_MAX))?;
    for fragment in fragments {
        notifier.notify(&fragment)?;
    }
    Ok(())
}

/// Serves one connected phone until it disconnects. `handler` turns a command
/// APDU into a response APDU.
pub fn serve(
    io: &mut dyn GattServerIo,
    handler: &mut dyn FnMut(&[u8], &RequestContext<'_>) -> Vec<u8>,
    options: PeripheralOptions,
) -> Result<(), LinkError> {
    let started = Instant::now();
    let mut reassembler = Reassembler::new(io.fragment_len(), options.reassembly_timeout_ms);
    let mut notifier = io.notifier();
    let cancel = io.cancel_flag();
    let poll = Duration::from_millis(options.poll_ms);
    loop {
        let event = io.next_write(poll)?;
        let now_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let fragment = match event {
            ServerEvent::Disconnected => return Ok(()),
            ServerEvent::Idle => {
                if let Err(e) = reassembler.poll(now_ms) {
                    notify_message(notifier.as_mut(), &Message::error(e.code()), io)?;
                }
                continue;
            }
            ServerEvent::Write(fragment) => fragment,
        };
        let message = match reassembler.push(&fragment, now_ms) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "damaged request fragment");
                notify_message(notifier.as_mut(), &Message::error(e.code()), io)?;
                continue;
            }
        };
        match message.cmd {
            Cmd::Msg => {
                cancel.store(false, Ordering::SeqCst);
                let answer = run_with_keepalive(io, handler, &message.data, &cancel, options)?;
                notify_message(notifier.as_mut(), &Message::new(Cmd::Msg, answer), io)?;
            }
            Cmd::Ping => notify_message(notifier.as_mut(), &message, io)?,
            // Nothing is running on this thread now, so there is nothing to cancel.
            Cmd::Cancel => {}
            Cmd::Keepalive | Cmd::Error => {
                notify_message(
                    notifier.as_mut(),
                    &Message::error(ErrorCode::InvalidCmd),
                    io,
                )?;
            }
        }
    }
}

fn run_with_keepalive(
    io: &dyn GattServerIo,
    handler: &mut dyn FnMut(&[u8], &RequestContext<'_>) -> Vec<u8>,
    apdu: &[u8],
    cancel: &AtomicBool,
    options: PeripheralOptions,
) -> Result<Vec<u8>, LinkError> {
    let status = AtomicU8::new(KeepaliveStatus::Processing.byte());
    let interval = Duration::from_millis(options.keepalive_interval_ms);
    let mut keepalive_notifier = io.notifier();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let status = &status;
        scope.spawn(move || loop {
            let message = Message::new(Cmd::Keepalive, vec![status.load(Ordering::SeqCst)]);
            for fragment in message
                .fragments(super::frame::FragmentLen::MIN)
                .into_iter()
                .flatten()
            {
                if keepalive_notifier.notify(&fragment).is_err() {
                    return;
                }
            }
            // Ends when the handler is done (the sender is dropped).
            if !matches!(
                done_rx.recv_timeout(interval),
                Err(mpsc::RecvTimeoutError::Timeout)
            ) {
                return;
            }
        });
        let context = RequestContext {
            cancel,
            keepalive_status: status,
        };
        let answer = handler(apdu, &context);
        drop(done_tx);
        Ok(answer)
    })
}
