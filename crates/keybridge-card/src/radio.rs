//! The real Bluetooth LE link on the device (feature `ble`): a GATT server on
//! BlueZ through `bluer`, feeding the same [`ble::serve`] engine as the
//! simulated link.
//!
//! A worker thread owns a current-thread tokio runtime, registers the
//! KeyBridge service (control point: write; status: notify; control-point
//! length: read) and advertises it. Writes go to the engine through a bounded
//! channel (a CANCEL raises the flag at once); notifications come back
//! through another. A phone that stops its notification session counts as
//! gone: the engine returns and the card is reset, as on the simulated link.
//!
//! Not testable here: this machine has no Bluetooth adapter. It is compiled
//! in CI (`cargo clippy --features ble`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::Duration;

use bluer::adv::Advertisement;
use bluer::gatt::local::{
    Application, Characteristic, CharacteristicNotify, CharacteristicNotifyMethod,
    CharacteristicRead, CharacteristicWrite, CharacteristicWriteMethod, Service,
};
use bluer::Uuid;
use futures_util::FutureExt;
use keybridge_transport::ble::frame::{
    FragmentLen, ATT_MTU_MAX, ATT_MTU_MIN, CONTROL_POINT_LENGTH_UUID_U128, CONTROL_POINT_UUID_U128,
    SERVICE_UUID_U128, STATUS_UUID_U128,
};
use keybridge_transport::ble::{self, GattServerIo, Notifier, ServerEvent};
use keybridge_transport::LinkError;

/// Fragments waiting between BlueZ and the engine.
const QUEUE_LEN_MAX: usize = 1_024;

/// What the BlueZ worker tells the engine.
#[derive(Debug)]
enum Event {
    Write(Vec<u8>),
    /// The phone ended its notification session (disconnected).
    Gone,
}

/// The device's GATT server on a real adapter. Clones share the one
/// registration: each stands for "the phone connected now".
#[derive(Debug, Clone)]
pub struct BluezServer {
    events: Arc<Mutex<mpsc::Receiver<Event>>>,
    notify: tokio::sync::mpsc::Sender<Vec<u8>>,
    fragment_len: Arc<AtomicUsize>,
    cancel: Arc<AtomicBool>,
}

#[derive(Debug)]
struct BluezNotifier {
    notify: tokio::sync::mpsc::Sender<Vec<u8>>,
}

impl Notifier for BluezNotifier {
    fn notify(&mut self, fragment: &[u8]) -> Result<(), LinkError> {
        self.notify
            .blocking_send(fragment.to_vec())
            .map_err(|_| LinkError::CardGone)
    }
}

impl GattServerIo for BluezServer {
    fn next_write(&mut self, wait: Duration) -> Result<ServerEvent, LinkError> {
        let events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        match events.recv_timeout(wait) {
            Ok(Event::Write(fragment)) => Ok(ServerEvent::Write(fragment)),
            Ok(Event::Gone) => Ok(ServerEvent::Disconnected),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(ServerEvent::Idle),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(LinkError::CardGone),
        }
    }

    fn notifier(&self) -> Box<dyn Notifier> {
        Box::new(BluezNotifier {
            notify: self.notify.clone(),
        })
    }

    fn fragment_len(&self) -> FragmentLen {
        FragmentLen::new(self.fragment_len.load(Ordering::SeqCst)).unwrap_or(FragmentLen::MIN)
    }

    fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }
}

fn fragment_len_for(mtu: u16) -> usize {
    FragmentLen::from_att_mtu(mtu.clamp(ATT_MTU_MIN, ATT_MTU_MAX))
        .map(FragmentLen::get)
        .unwrap_or(FragmentLen::MIN.get())
}

/// Registers the service, advertises as `name`, and returns the server once
/// BlueZ accepted both. The worker thread lives as long as the process.
pub fn start(name: &str) -> Result<BluezServer, LinkError> {
    let (events_tx, events_rx) = mpsc::sync_channel::<Event>(QUEUE_LEN_MAX);
    let (notify_tx, notify_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(QUEUE_LEN_MAX);
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), String>>(1);
    let fragment_len = Arc::new(AtomicUsize::new(FragmentLen::MIN.get()));
    let cancel = Arc::new(AtomicBool::new(false));
    let (len2, cancel2, name) = (fragment_len.clone(), cancel.clone(), name.to_owned());
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
        runtime.block_on(async move {
            match serve_gatt(&name, events_tx, notify_rx, len2, cancel2).await {
                Ok(handles) => {
                    let _ = ready_tx.send(Ok(()));
                    // Keep the registration and the advertisement alive.
                    std::future::pending::<()>().await;
                    drop(handles);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                }
            }
        });
    });
    ready_rx
        .recv()
        .map_err(|_| LinkError::Reader("BlueZ worker ended".into()))?
        .map_err(LinkError::Reader)?;
    Ok(BluezServer {
        events: Arc::new(Mutex::new(events_rx)),
        notify: notify_tx,
        fragment_len,
        cancel,
    })
}

type Handles = (
    bluer::adv::AdvertisementHandle,
    bluer::gatt::local::ApplicationHandle,
);

async fn serve_gatt(
    name: &str,
    events: mpsc::SyncSender<Event>,
    notify_rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    fragment_len: Arc<AtomicUsize>,
    cancel: Arc<AtomicBool>,
) -> bluer::Result<Handles> {
    let session = bluer::Session::new().await?;
    let adapter = session.default_adapter().await?;
    adapter.set_powered(true).await?;
    let service = Uuid::from_u128(SERVICE_UUID_U128);
    let advertisement = adapter
        .advertise(Advertisement {
            service_uuids: [service].into_iter().collect(),
            discoverable: Some(true),
            local_name: Some(name.to_owned()),
            ..Default::default()
        })
        .await?;
    let notify_rx = Arc::new(tokio::sync::Mutex::new(notify_rx));
    let (len_read, len_write) = (fragment_len.clone(), fragment_len);
    let gone = events.clone();
    let application = Application {
        services: vec![Service {
            uuid: service,
            primary: true,
            characteristics: vec![
                Characteristic {
                    uuid: Uuid::from_u128(CONTROL_POINT_UUID_U128),
                    write: Some(CharacteristicWrite {
                        write: true,
                        method: CharacteristicWriteMethod::Fun(Box::new(move |value, request| {
                            len_write.store(fragment_len_for(request.mtu), Ordering::SeqCst);
                            if ble::is_cancel(&value) {
                                cancel.store(true, Ordering::SeqCst);
                            }
                            // A full queue means the engine is stuck: lose the
                            // fragment; the phone's retransmission recovers.
                            let _ = events.try_send(Event::Write(value));
                            async { Ok(()) }.boxed()
                        })),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Characteristic {
                    uuid: Uuid::from_u128(CONTROL_POINT_LENGTH_UUID_U128),
                    read: Some(CharacteristicRead {
                        read: true,
                        fun: Box::new(move |request| {
                            let len = fragment_len_for(request.mtu);
                            len_read.store(len, Ordering::SeqCst);
                            let bytes = u16::try_from(len).unwrap_or(20).to_be_bytes().to_vec();
                            async move { Ok(bytes) }.boxed()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Characteristic {
                    uuid: Uuid::from_u128(STATUS_UUID_U128),
                    notify: Some(CharacteristicNotify {
                        notify: true,
                        method: CharacteristicNotifyMethod::Fun(Box::new(move |mut notifier| {
                            let notify_rx = notify_rx.clone();
                            let gone = gone.clone();
                            async move {
                                tokio::spawn(async move {
                                    let mut rx = notify_rx.lock().await;
                                    while let Some(fragment) = rx.recv().await {
                                        if notifier.notify(fragment).await.is_err() {
                                            break;
                                        }
                                    }
                                    let _ = gone.try_send(Event::Gone);
                                });
                            }
                            .boxed()
                        })),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
        ..Default::default()
    };
    let application = adapter.serve_gatt_application(application).await?;
    Ok((advertisement, application))
}
