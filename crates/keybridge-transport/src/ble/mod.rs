//! Bluetooth LE between the phone (GATT client) and the device (GATT server).
//!
//! - [`frame`]: the service and characteristic UUIDs, the INIT/CONT fragment
//!   format, commands, error codes, [`FragmentLen`] (20..=512) and the
//!   fragmenting iterator. IO-free.
//! - [`reassembly`]: [`Reassembler`], fragments back into messages with a
//!   timeout; the time is an argument. IO-free.
//! - [`central`]: [`Central`], the phone's request/response engine over any
//!   [`GattClientIo`]: sends an APDU as a MSG, waits through KEEPALIVEs, and
//!   sends the whole request again when fragments were lost; a [`CardChannel`].
//! - [`peripheral`]: [`serve`], the device's engine over any [`GattServerIo`]:
//!   reassembles requests, sends KEEPALIVE while the handler works, notices
//!   CANCEL, answers ERROR frames.
//! - [`sim`]: the simulated link, GATT operations over TCP with a shaped
//!   (latency, loss) channel, and a man-in-the-middle [`sim::Proxy`] for tests.
//!
//! The real radio (btleplug on the phone, BlueZ on the device) lives in the
//! relay and card crates behind their `ble` feature: they only implement
//! [`GattClientIo`] / [`GattServerIo`].

pub mod central;
pub mod frame;
pub mod peripheral;
pub mod reassembly;
pub mod sim;

use std::time::Duration;

pub use central::{Central, CentralOptions, LinkStats};
pub use frame::{Cmd, ErrorCode, Fragment, FragmentLen, Fragments, FrameError, Message};
pub use peripheral::{serve, PeripheralOptions, RequestContext};
pub use reassembly::Reassembler;

use crate::channel::{CardChannel, LinkError};

/// What the phone's BLE stack does for the engine: write the control point,
/// receive status notifications.
pub trait GattClientIo: Send + std::fmt::Debug {
    /// Writes one fragment to the control-point characteristic.
    fn write(&mut self, fragment: &[u8]) -> Result<(), LinkError>;
    /// The next status notification, waiting at most `wait`; `Ok(None)` when
    /// none came in time.
    fn next_notification(&mut self, wait: Duration) -> Result<Option<Vec<u8>>, LinkError>;
    /// The negotiated fragment length (control-point length and ATT MTU).
    fn fragment_len(&self) -> FragmentLen;
    /// The negotiated ATT MTU, for display.
    fn att_mtu(&self) -> u16;
}

/// One event on the device's side of the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// The phone wrote this fragment to the control point.
    Write(Vec<u8>),
    /// Nothing arrived in the wait.
    Idle,
    /// The phone disconnected.
    Disconnected,
}

/// What the device's BLE stack does for the engine.
pub trait GattServerIo: Send {
    fn next_write(&mut self, wait: Duration) -> Result<ServerEvent, LinkError>;
    /// A handle that notifies on the status characteristic, usable from the
    /// keep-alive thread while the main thread runs the handler.
    fn notifier(&self) -> Box<dyn Notifier>;
    fn fragment_len(&self) -> FragmentLen;
    /// Set when a CANCEL fragment is written, even while the handler runs
    /// (the IO's reader sees it before the engine does).
    fn cancel_flag(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool>;
}

/// Sends one notification on the status characteristic.
pub trait Notifier: Send {
    fn notify(&mut self, fragment: &[u8]) -> Result<(), LinkError>;
}

/// Whether a written fragment is a whole CANCEL request: IO readers call this
/// to raise the cancel flag while the device is busy.
pub fn is_cancel(fragment: &[u8]) -> bool {
    matches!(
        Fragment::try_from(fragment),
        Ok(Fragment::Init {
            cmd: Cmd::Cancel,
            len: 0,
            ..
        })
    )
}

impl<T: GattClientIo + ?Sized> GattClientIo for Box<T> {
    fn write(&mut self, fragment: &[u8]) -> Result<(), LinkError> {
        (**self).write(fragment)
    }
    fn next_notification(&mut self, wait: Duration) -> Result<Option<Vec<u8>>, LinkError> {
        (**self).next_notification(wait)
    }
    fn fragment_len(&self) -> FragmentLen {
        (**self).fragment_len()
    }
    fn att_mtu(&self) -> u16 {
        (**self).att_mtu()
    }
}

impl<Io: GattClientIo> CardChannel for Central<Io> {
    fn transmit_raw(&mut self, command: &[u8]) -> Result<Vec<u8>, LinkError> {
        self.request(command)
    }
}
