//! The simulated BLE link: GATT operations carried over TCP, shaped.
//!
//! Each GATT operation is one TCP frame `OP(1) ‖ LEN(2, BE) ‖ VALUE(LEN ≤ 512)`:
//!
//! | op   | direction        | value                                       |
//! |------|------------------|---------------------------------------------|
//! | `01` | phone → device   | EXCHANGE MTU request: the phone's ATT MTU (u16) |
//! | `02` | device → phone   | EXCHANGE MTU response: the agreed ATT MTU (u16) |
//! | `03` | phone → device   | READ control-point length (empty)           |
//! | `04` | device → phone   | its value: the fragment length (u16)        |
//! | `05` | phone → device   | WRITE control point: one fragment           |
//! | `06` | device → phone   | NOTIFY status: one fragment                 |
//!
//! The device listens (it advertises), the phone connects (it scans and
//! connects), as in BLE. The phone opens with `01` then `03`; after that only
//! `05` and `06` flow. Each side can shape its link with a [`LinkShape`]:
//! every fragment it sends or receives is delayed by `latency_ms` and lost with
//! probability `drop_rate`, from a seeded RNG so a failing run is reproduced
//! from its seed. Only `05`/`06` are shaped: ATT's own procedures are
//! acknowledged and retried by the link layer, fragments are what the
//! application can lose. [`Proxy`] sits between the two as a man in the
//! middle, for tests.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::frame::{FragmentLen, ATT_MTU_MAX, ATT_MTU_MIN, FRAGMENT_LEN_MAX};
use super::{is_cancel, GattClientIo, GattServerIo, Notifier, ServerEvent};
use crate::channel::LinkError;

/// Largest value of one GATT operation (an attribute value).
pub const VALUE_LEN_MAX: usize = FRAGMENT_LEN_MAX;
/// How long each side waits for the other during the MTU exchange.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// Bound on fragments waiting between a socket reader thread and the engine.
const QUEUE_LEN_MAX: usize = 1_024;
/// Loss rates above this leave nothing to test but retries.
pub const DROP_RATE_MAX: f64 = 0.5;

/// One GATT operation on the simulated link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GattOp {
    MtuRequest(u16),
    MtuResponse(u16),
    ReadControlPointLength,
    ControlPointLength(u16),
    Write(Vec<u8>),
    Notify(Vec<u8>),
}

impl GattOp {
    fn parts(&self) -> (u8, Vec<u8>) {
        match self {
            GattOp::MtuRequest(m) => (0x01, m.to_be_bytes().to_vec()),
            GattOp::MtuResponse(m) => (0x02, m.to_be_bytes().to_vec()),
            GattOp::ReadControlPointLength => (0x03, Vec::new()),
            GattOp::ControlPointLength(l) => (0x04, l.to_be_bytes().to_vec()),
            GattOp::Write(v) => (0x05, v.clone()),
            GattOp::Notify(v) => (0x06, v.clone()),
        }
    }

    /// Encodes the operation; a value over [`VALUE_LEN_MAX`] is refused.
    pub fn encode(&self) -> io::Result<Vec<u8>> {
        let (op, value) = self.parts();
        if value.len() > VALUE_LEN_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "GATT value over 512 bytes",
            ));
        }
        let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
        let mut out = Vec::with_capacity(3 + value.len());
        out.push(op);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&value);
        Ok(out)
    }

    pub fn decode(op: u8, value: Vec<u8>) -> io::Result<GattOp> {
        let u16_value = |v: &[u8]| match v {
            [a, b] => Ok(u16::from_be_bytes([*a, *b])),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "GATT u16 value of wrong size",
            )),
        };
        Ok(match op {
            0x01 => GattOp::MtuRequest(u16_value(&value)?),
            0x02 => GattOp::MtuResponse(u16_value(&value)?),
            0x03 if value.is_empty() => GattOp::ReadControlPointLength,
            0x04 => GattOp::ControlPointLength(u16_value(&value)?),
            0x05 => GattOp::Write(value),
            0x06 => GattOp::Notify(value),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "unknown GATT operation",
                ))
            }
        })
    }
}

pub fn write_op(w: &mut impl Write, op: &GattOp) -> io::Result<()> {
    w.write_all(&op.encode()?)?;
    w.flush()
}

/// Reads one operation; `Ok(None)` on a clean end of stream (before an
/// operation began; one cut off, its header included, is an error).
pub fn read_op(r: &mut impl Read) -> io::Result<Option<GattOp>> {
    let mut header = [0u8; 3];
    if !crate::stream::read_header(r, &mut header)? {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([header[1], header[2]]));
    if len > VALUE_LEN_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "GATT value over 512 bytes",
        ));
    }
    let mut value = vec![0u8; len];
    r.read_exact(&mut value)?;
    GattOp::decode(header[0], value).map(Some)
}

/// How one side shapes its link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkShape {
    pub latency_ms: u64,
    /// Probability that a fragment is lost, in parts per million (integer, so
    /// a shape compares and prints exactly); at most [`DROP_RATE_MAX`].
    pub drop_ppm: u32,
    pub seed: u64,
}

impl Default for LinkShape {
    fn default() -> LinkShape {
        LinkShape {
            latency_ms: 0,
            drop_ppm: 0,
            seed: 1,
        }
    }
}

impl LinkShape {
    pub fn new(latency_ms: u64, drop_rate: f64, seed: u64) -> Result<LinkShape, String> {
        if !(0.0..=DROP_RATE_MAX).contains(&drop_rate) {
            return Err(format!("drop rate {drop_rate} outside 0..={DROP_RATE_MAX}"));
        }
        if latency_ms > 10_000 {
            return Err(format!("latency {latency_ms} ms over 10000"));
        }
        // In 0..=0.5 (checked above), so the product is in 0..=500_000: the
        // cast neither truncates nor meets a sign.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let drop_ppm = (drop_rate * 1_000_000.0).round() as u32;
        Ok(LinkShape {
            latency_ms,
            drop_ppm,
            seed,
        })
    }

    pub fn drop_rate(&self) -> f64 {
        f64::from(self.drop_ppm) / 1_000_000.0
    }
}

/// The seeded loss and delay of one side, shared by its threads.
#[derive(Debug)]
struct Shaper {
    shape: LinkShape,
    rng: Mutex<StdRng>,
    dropped: std::sync::atomic::AtomicU64,
}

impl Shaper {
    fn new(shape: LinkShape) -> Shaper {
        Shaper {
            shape,
            rng: Mutex::new(StdRng::seed_from_u64(shape.seed)),
            dropped: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Delays, then says whether the fragment survives.
    fn pass(&self) -> bool {
        if self.shape.latency_ms > 0 {
            std::thread::sleep(Duration::from_millis(self.shape.latency_ms));
        }
        if self.shape.drop_ppm == 0 {
            return true;
        }
        let lost = self
            .rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .gen_range(0..1_000_000u32)
            < self.shape.drop_ppm;
        if lost {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        !lost
    }
}

fn io_err(e: io::Error) -> LinkError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => LinkError::CardGone,
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => LinkError::Timeout,
        _ => LinkError::Io(e),
    }
}

/// Spawns a thread that reads operations from `stream` and hands them over;
/// the channel closes when the peer goes away. `filter` sees each operation
/// first (to answer ATT procedures, shape, or watch for CANCEL) and returns
/// what to queue.
fn spawn_reader(
    mut stream: TcpStream,
    mut filter: impl FnMut(GattOp) -> Option<Vec<u8>> + Send + 'static,
) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::sync_channel(QUEUE_LEN_MAX);
    std::thread::spawn(move || {
        while let Ok(Some(op)) = read_op(&mut stream) {
            if let Some(fragment) = filter(op) {
                if tx.send(fragment).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// The phone's end of the simulated link.
#[derive(Debug)]
pub struct SimClient {
    writer: TcpStream,
    notifications: mpsc::Receiver<Vec<u8>>,
    fragment_len: FragmentLen,
    att_mtu: u16,
    shaper: Arc<Shaper>,
}

impl SimClient {
    /// Connects to a device, agrees on the ATT MTU (`att_mtu` is the phone's
    /// largest) and reads the control-point length.
    pub fn connect(
        addr: impl ToSocketAddrs,
        att_mtu: u16,
        shape: LinkShape,
    ) -> Result<SimClient, LinkError> {
        if !(ATT_MTU_MIN..=ATT_MTU_MAX).contains(&att_mtu) {
            return Err(LinkError::Reader(format!(
                "ATT MTU {att_mtu} outside {ATT_MTU_MIN}..={ATT_MTU_MAX}"
            )));
        }
        let mut stream = TcpStream::connect(addr).map_err(io_err)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_millis(HANDSHAKE_TIMEOUT_MS)))?;
        write_op(&mut stream, &GattOp::MtuRequest(att_mtu)).map_err(io_err)?;
        let agreed = match read_op(&mut stream).map_err(io_err)? {
            Some(GattOp::MtuResponse(m)) => m.min(att_mtu),
            _ => {
                return Err(LinkError::Reader(
                    "device did not answer the MTU exchange".into(),
                ))
            }
        };
        write_op(&mut stream, &GattOp::ReadControlPointLength).map_err(io_err)?;
        let cpl = match read_op(&mut stream).map_err(io_err)? {
            Some(GattOp::ControlPointLength(l)) => usize::from(l),
            _ => {
                return Err(LinkError::Reader(
                    "device did not answer the control-point-length read".into(),
                ))
            }
        };
        let by_mtu =
            FragmentLen::from_att_mtu(agreed).map_err(|e| LinkError::Reader(e.to_string()))?;
        let by_device = FragmentLen::new(cpl).map_err(|e| LinkError::Reader(e.to_string()))?;
        stream.set_read_timeout(None)?;
        let shaper = Arc::new(Shaper::new(shape));
        let inbound = shaper.clone();
        let notifications = spawn_reader(stream.try_clone()?, move |op| match op {
            GattOp::Notify(fragment) if inbound.pass() => Some(fragment),
            _ => None,
        });
        Ok(SimClient {
            writer: stream,
            notifications,
            fragment_len: by_mtu.min(by_device),
            att_mtu: agreed,
            shaper,
        })
    }

    /// Fragments this side lost on purpose, both directions.
    pub fn dropped(&self) -> u64 {
        self.shaper.dropped.load(Ordering::Relaxed)
    }
}

impl GattClientIo for SimClient {
    fn write(&mut self, fragment: &[u8]) -> Result<(), LinkError> {
        if self.shaper.pass() {
            write_op(&mut self.writer, &GattOp::Write(fragment.to_vec())).map_err(io_err)?;
        }
        Ok(())
    }

    fn next_notification(&mut self, wait: Duration) -> Result<Option<Vec<u8>>, LinkError> {
        let got = if wait.is_zero() {
            self.notifications.try_recv().map_err(|e| match e {
                mpsc::TryRecvError::Empty => None,
                mpsc::TryRecvError::Disconnected => Some(LinkError::CardGone),
            })
        } else {
            self.notifications.recv_timeout(wait).map_err(|e| match e {
                mpsc::RecvTimeoutError::Timeout => None,
                mpsc::RecvTimeoutError::Disconnected => Some(LinkError::CardGone),
            })
        };
        match got {
            Ok(fragment) => Ok(Some(fragment)),
            Err(None) => Ok(None),
            Err(Some(e)) => Err(e),
        }
    }

    fn fragment_len(&self) -> FragmentLen {
        self.fragment_len
    }

    fn att_mtu(&self) -> u16 {
        self.att_mtu
    }
}

/// The device's listening end: it "advertises" on a TCP port.
#[derive(Debug)]
pub struct SimServer {
    listener: TcpListener,
    att_mtu_max: u16,
    shape: LinkShape,
}

impl SimServer {
    /// `att_mtu_max` is the largest ATT MTU the device supports.
    pub fn bind(
        addr: impl ToSocketAddrs,
        att_mtu_max: u16,
        shape: LinkShape,
    ) -> io::Result<SimServer> {
        if !(ATT_MTU_MIN..=ATT_MTU_MAX).contains(&att_mtu_max) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "ATT MTU outside 23..=515",
            ));
        }
        Ok(SimServer {
            listener: TcpListener::bind(addr)?,
            att_mtu_max,
            shape,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Waits for a phone, answers its MTU exchange and control-point-length
    /// read, and returns the connection.
    pub fn accept(&self) -> Result<SimConnection, LinkError> {
        let (mut stream, _) = self.listener.accept()?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_millis(HANDSHAKE_TIMEOUT_MS)))?;
        let mut att_mtu = ATT_MTU_MIN;
        loop {
            match read_op(&mut stream).map_err(io_err)? {
                Some(GattOp::MtuRequest(m)) => {
                    att_mtu = m.clamp(ATT_MTU_MIN, self.att_mtu_max);
                    write_op(&mut stream, &GattOp::MtuResponse(att_mtu)).map_err(io_err)?;
                }
                Some(GattOp::ReadControlPointLength) => {
                    let len = FragmentLen::from_att_mtu(att_mtu)
                        .map_err(|e| LinkError::Reader(e.to_string()))?;
                    let len16 = u16::from_be_bytes(len.to_be_bytes());
                    write_op(&mut stream, &GattOp::ControlPointLength(len16)).map_err(io_err)?;
                    break;
                }
                Some(_) => {
                    return Err(LinkError::Reader(
                        "phone wrote before reading the control-point length".into(),
                    ))
                }
                None => return Err(LinkError::CardGone),
            }
        }
        stream.set_read_timeout(None)?;
        let fragment_len =
            FragmentLen::from_att_mtu(att_mtu).map_err(|e| LinkError::Reader(e.to_string()))?;
        let shaper = Arc::new(Shaper::new(self.shape));
        let cancel = Arc::new(AtomicBool::new(false));
        let (inbound, watch) = (shaper.clone(), cancel.clone());
        let writes = spawn_reader(stream.try_clone()?, move |op| match op {
            GattOp::Write(fragment) if inbound.pass() => {
                if is_cancel(&fragment) {
                    watch.store(true, Ordering::SeqCst);
                }
                Some(fragment)
            }
            _ => None,
        });
        Ok(SimConnection {
            writer: Arc::new(Mutex::new(stream)),
            writes,
            fragment_len,
            att_mtu,
            shaper,
            cancel,
        })
    }
}

/// One phone connected to the device.
#[derive(Debug)]
pub struct SimConnection {
    writer: Arc<Mutex<TcpStream>>,
    writes: mpsc::Receiver<Vec<u8>>,
    fragment_len: FragmentLen,
    att_mtu: u16,
    shaper: Arc<Shaper>,
    cancel: Arc<AtomicBool>,
}

impl SimConnection {
    pub fn att_mtu(&self) -> u16 {
        self.att_mtu
    }
}

#[derive(Debug)]
struct SimNotifier {
    writer: Arc<Mutex<TcpStream>>,
    shaper: Arc<Shaper>,
}

impl Notifier for SimNotifier {
    fn notify(&mut self, fragment: &[u8]) -> Result<(), LinkError> {
        if !self.shaper.pass() {
            return Ok(());
        }
        let mut stream = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        write_op(&mut *stream, &GattOp::Notify(fragment.to_vec())).map_err(io_err)
    }
}

impl GattServerIo for SimConnection {
    fn next_write(&mut self, wait: Duration) -> Result<ServerEvent, LinkError> {
        match self.writes.recv_timeout(wait) {
            Ok(fragment) => Ok(ServerEvent::Write(fragment)),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(ServerEvent::Idle),
            Err(mpsc::RecvTimeoutError::Disconnected) => Ok(ServerEvent::Disconnected),
        }
    }

    fn notifier(&self) -> Box<dyn Notifier> {
        Box::new(SimNotifier {
            writer: self.writer.clone(),
            shaper: self.shaper.clone(),
        })
    }

    fn fragment_len(&self) -> FragmentLen {
        self.fragment_len
    }

    fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }
}

/// Which way an operation was going when the [`Proxy`] saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    PhoneToDevice,
    DeviceToPhone,
}

/// What a proxy hook decides for one operation: forward these (none to drop,
/// the same one to pass, altered or extra ones to attack).
pub type ProxyHook = dyn FnMut(Direction, GattOp) -> Vec<GattOp> + Send;

/// A man in the middle on the simulated link: accepts phones on its own
/// address and connects each to the device, passing every GATT operation
/// through a hook that may record, drop, alter or inject.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
}

impl Proxy {
    pub fn start(
        listen: impl ToSocketAddrs,
        device: SocketAddr,
        hook: Arc<Mutex<Box<ProxyHook>>>,
    ) -> io::Result<Proxy> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        std::thread::spawn(move || {
            for phone in listener.incoming() {
                let Ok(phone) = phone else { continue };
                let Ok(device) = TcpStream::connect(device) else {
                    continue;
                };
                let _ = phone.set_nodelay(true);
                let _ = device.set_nodelay(true);
                let (Ok(phone2), Ok(device2)) = (phone.try_clone(), device.try_clone()) else {
                    continue;
                };
                pump(phone, device2, Direction::PhoneToDevice, hook.clone());
                pump(device, phone2, Direction::DeviceToPhone, hook.clone());
            }
        });
        Ok(Proxy { addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    direction: Direction,
    hook: Arc<Mutex<Box<ProxyHook>>>,
) {
    std::thread::spawn(move || {
        while let Ok(Some(op)) = read_op(&mut from) {
            let out = (hook.lock().unwrap_or_else(PoisonError::into_inner))(direction, op);
            for op in out {
                if write_op(&mut to, &op).is_err() {
                    return;
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ble::{serve, Central, CentralOptions, PeripheralOptions};

    #[test]
    fn gatt_ops_round_trip_and_refuse_oversized_values() {
        for op in [
            GattOp::MtuRequest(185),
            GattOp::MtuResponse(23),
            GattOp::ReadControlPointLength,
            GattOp::ControlPointLength(182),
            GattOp::Write(vec![0x83, 0, 1, 0xAA]),
            GattOp::Notify(vec![0; 512]),
        ] {
            let bytes = op.encode().unwrap();
            assert_eq!(read_op(&mut bytes.as_slice()).unwrap(), Some(op));
        }
        assert!(GattOp::Write(vec![0; 513]).encode().is_err());
        assert!(read_op(&mut &[0x05, 0x02, 0x01][..]).is_err());
        assert!(read_op(&mut &[0x09, 0x00, 0x00][..]).is_err());
        assert_eq!(read_op(&mut &[][..]).unwrap(), None);
    }

    /// An echo device over a real loopback socket, at the phone's MTU and the
    /// device's, under loss: every request comes back whole.
    #[test]
    fn requests_survive_mtu_negotiation_and_loss() {
        let server = SimServer::bind("127.0.0.1:0", 185, LinkShape::default()).unwrap();
        let addr = server.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut conn = server.accept().unwrap();
            let mut echo = |apdu: &[u8], _: &crate::ble::RequestContext<'_>| apdu.to_vec();
            serve(&mut conn, &mut echo, PeripheralOptions::default()).unwrap();
        });
        let client = SimClient::connect(addr, 515, LinkShape::new(0, 0.03, 42).unwrap()).unwrap();
        assert_eq!(client.att_mtu(), 185);
        assert_eq!(client.fragment_len().get(), 182);
        let mut central = Central::new(
            client,
            CentralOptions {
                idle_ms_max: 300,
                attempts_max: 30,
                busy_ms_max: 30_000,
            },
        );
        for size in [1usize, 200, 1_000, 3_000] {
            let data: Vec<u8> = (0..size).map(|i| u8::try_from(i % 253).unwrap()).collect();
            assert_eq!(central.request(&data).unwrap(), data);
        }
        assert!(central.io().dropped() > 0, "the shape lost nothing");
        assert!(central.stats().retransmissions > 0);
        assert!(central.ping(b"hi").is_ok() || central.ping(b"hi").is_ok());
    }
}
