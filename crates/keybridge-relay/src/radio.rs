//! The real Bluetooth LE link on the phone (feature `ble`): a GATT client
//! with `btleplug`, feeding the same [`Central`] engine as the simulated link.
//!
//! btleplug is async; the card conversation is a blocking one. A worker
//! thread owns a current-thread tokio runtime and the connected peripheral;
//! [`BtleClient`] talks to it over bounded std channels. The worker scans for
//! a device advertising [`SERVICE_UUID_U128`], connects, discovers the
//! service, reads the control-point length, subscribes to the status
//! characteristic, then forwards writes and notifications until the device
//! goes away.
//!
//! Not testable here: this machine has no Bluetooth adapter. It is compiled
//! in CI (`cargo clippy --features ble`); what runs in tests is the simulated
//! link, through the same engine.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use btleplug::api::{Central as _, Manager as _, Peripheral as _, ScanFilter, WriteType};
use btleplug::platform::{Manager, Peripheral};
use futures_util::StreamExt;
use keybridge_transport::ble::frame::{
    FragmentLen, CONTROL_POINT_LENGTH_UUID_U128, CONTROL_POINT_UUID_U128, SERVICE_UUID_U128,
    STATUS_UUID_U128,
};
use keybridge_transport::ble::GattClientIo;
use keybridge_transport::LinkError;
use uuid::Uuid;

/// Notifications waiting for the engine; more means the engine is gone.
const QUEUE_LEN_MAX: usize = 1_024;
/// How often the worker looks for the advertising device while scanning.
const SCAN_POLL_MS: u64 = 200;

/// A write for the worker, and where to say how it went.
type WriteRequest = (Vec<u8>, mpsc::SyncSender<Result<(), String>>);

/// The phone's GATT client on a real adapter.
#[derive(Debug)]
pub struct BtleClient {
    writes: mpsc::SyncSender<WriteRequest>,
    notifications: mpsc::Receiver<Vec<u8>>,
    fragment_len: FragmentLen,
}

impl BtleClient {
    /// Scans up to `wait` for a KeyBridge device and connects to it.
    pub fn connect(wait: Duration) -> Result<BtleClient, LinkError> {
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<FragmentLen, String>>(1);
        let (writes_tx, writes_rx) = mpsc::sync_channel::<WriteRequest>(16);
        let (notify_tx, notify_rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE_LEN_MAX);
        std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(worker(wait, ready_tx, writes_rx, notify_tx));
        });
        let fragment_len = ready_rx
            .recv()
            .map_err(|_| LinkError::Reader("BLE worker ended".into()))?
            .map_err(LinkError::Reader)?;
        Ok(BtleClient {
            writes: writes_tx,
            notifications: notify_rx,
            fragment_len,
        })
    }
}

fn uuid(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

async fn find_device(wait: Duration) -> Result<Peripheral, String> {
    let manager = Manager::new().await.map_err(|e| e.to_string())?;
    let adapter = manager
        .adapters()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
        .ok_or("no Bluetooth adapter")?;
    adapter
        .start_scan(ScanFilter {
            services: vec![uuid(SERVICE_UUID_U128)],
        })
        .await
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + wait;
    loop {
        for p in adapter.peripherals().await.map_err(|e| e.to_string())? {
            let advertised = p
                .properties()
                .await
                .ok()
                .flatten()
                .is_some_and(|props| props.services.contains(&uuid(SERVICE_UUID_U128)));
            if advertised {
                let _ = adapter.stop_scan().await;
                return Ok(p);
            }
        }
        if Instant::now() >= deadline {
            let _ = adapter.stop_scan().await;
            return Err("no KeyBridge device advertising".into());
        }
        tokio::time::sleep(Duration::from_millis(SCAN_POLL_MS)).await;
    }
}

async fn worker(
    wait: Duration,
    ready: mpsc::SyncSender<Result<FragmentLen, String>>,
    writes: mpsc::Receiver<WriteRequest>,
    notify: mpsc::SyncSender<Vec<u8>>,
) {
    let setup = async {
        let device = find_device(wait).await?;
        device.connect().await.map_err(|e| e.to_string())?;
        device
            .discover_services()
            .await
            .map_err(|e| e.to_string())?;
        let characteristics = device.characteristics();
        let find = |n: u128| {
            characteristics
                .iter()
                .find(|c| c.uuid == uuid(n))
                .cloned()
                .ok_or_else(|| format!("device lacks characteristic {}", uuid(n)))
        };
        let (control_point, status, length) = (
            find(CONTROL_POINT_UUID_U128)?,
            find(STATUS_UUID_U128)?,
            find(CONTROL_POINT_LENGTH_UUID_U128)?,
        );
        let len = match device
            .read(&length)
            .await
            .map_err(|e| e.to_string())?
            .as_slice()
        {
            [hi, lo] => usize::from(u16::from_be_bytes([*hi, *lo])),
            _ => return Err("control-point length is not 2 bytes".to_owned()),
        };
        let fragment_len = FragmentLen::new(len).map_err(|e| e.to_string())?;
        device.subscribe(&status).await.map_err(|e| e.to_string())?;
        let stream = device.notifications().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((device, control_point, fragment_len, stream))
    };
    let (device, control_point, fragment_len, mut stream) = match setup.await {
        Ok(ok) => ok,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(fragment_len));
    let status_uuid = uuid(STATUS_UUID_U128);
    // Notifications flow on their own task; writes are served here.
    let forward = tokio::spawn(async move {
        while let Some(n) = stream.next().await {
            if n.uuid == status_uuid && notify.send(n.value).is_err() {
                return;
            }
        }
    });
    loop {
        // The engine is a blocking thread: poll its channel without blocking ours.
        match writes.try_recv() {
            Ok((fragment, done)) => {
                let result = device
                    .write(&control_point, &fragment, WriteType::WithResponse)
                    .await
                    .map_err(|e| e.to_string());
                let _ = done.send(result);
            }
            Err(mpsc::TryRecvError::Empty) => tokio::time::sleep(Duration::from_millis(2)).await,
            Err(mpsc::TryRecvError::Disconnected) => break,
        }
        if forward.is_finished() {
            break;
        }
    }
    forward.abort();
    let _ = device.disconnect().await;
}

impl GattClientIo for BtleClient {
    fn write(&mut self, fragment: &[u8]) -> Result<(), LinkError> {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        self.writes
            .send((fragment.to_vec(), done_tx))
            .map_err(|_| LinkError::CardGone)?;
        match done_rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(LinkError::Reader(e)),
            Err(_) => Err(LinkError::CardGone),
        }
    }

    fn next_notification(&mut self, wait: Duration) -> Result<Option<Vec<u8>>, LinkError> {
        if wait.is_zero() {
            return match self.notifications.try_recv() {
                Ok(f) => Ok(Some(f)),
                Err(mpsc::TryRecvError::Empty) => Ok(None),
                Err(mpsc::TryRecvError::Disconnected) => Err(LinkError::CardGone),
            };
        }
        match self.notifications.recv_timeout(wait) {
            Ok(f) => Ok(Some(f)),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(LinkError::CardGone),
        }
    }

    fn fragment_len(&self) -> FragmentLen {
        self.fragment_len
    }

    fn att_mtu(&self) -> u16 {
        // btleplug does not expose the ATT MTU; the device derived the
        // control-point length from it (length = MTU - 3).
        u16::try_from(self.fragment_len.get() + 3).unwrap_or(u16::MAX)
    }
}
