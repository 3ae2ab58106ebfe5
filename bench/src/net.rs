//! Client sockets bound to one of several 127.0.0.x source addresses.
//!
//! A TCP client has ~28k ephemeral ports per (source address, destination) pair
//! (`ip_local_port_range` 32768-60999). Holding 9.5k streams while closing and reopening them,
//! plus a connection-setup run at thousands per second, would run out of ports on one source
//! address, so each connection picks a source from 127.0.0.2.. in turn. Binding before connect
//! normally reserves a port at bind time for *any* destination, which defeats the point:
//! IP_BIND_ADDRESS_NO_PORT defers the port choice to connect(), where the kernel can reuse a
//! port per 4-tuple.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

/// The `n`-th source address of `count` (127.0.0.2, 127.0.0.3, ...), or none when `count` is 0.
pub fn source_addr(n: usize, count: usize) -> Option<Ipv4Addr> {
    if count == 0 {
        return None;
    }
    let i = (n % count) as u32 + 2;
    Some(Ipv4Addr::from(0x7f00_0000u32 | i))
}

/// Connects to `dst`, from `src` when given (port chosen at connect time), with TCP_NODELAY.
pub async fn connect_from(src: Option<Ipv4Addr>, dst: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    if let Some(ip) = src {
        set_bind_address_no_port(&socket)?;
        socket.bind(&SocketAddr::V4(SocketAddrV4::new(ip, 0)).into())?;
    }
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    socket.connect(dst).await
}

/// Like [`connect_from`], over a link like a phone's: a 4 KiB receive buffer and a 536-byte
/// MSS. A client that then stops reading fills the kernel's buffers in front of the proxy with
/// about 100 KiB, as on a real network; over loopback (64 KiB segments) the kernel would give
/// the proxy's socket megabytes of send buffer, and a stall would take minutes to matter.
pub async fn connect_slow_link(src: Option<Ipv4Addr>, dst: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_recv_buffer_size(4096)?;
    socket.set_tcp_mss(536)?;
    if let Some(ip) = src {
        set_bind_address_no_port(&socket)?;
        socket.bind(&SocketAddr::V4(SocketAddrV4::new(ip, 0)).into())?;
    }
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    socket.connect(dst).await
}

/// IP_BIND_ADDRESS_NO_PORT (Linux >= 4.2): socket2 0.6 has no setter for it, so this is the
/// crate's one direct setsockopt.
#[allow(unsafe_code)]
fn set_bind_address_no_port(socket: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: the fd is a live socket owned by `socket` for the whole call, and the option
    // value pointer/length describe a valid c_int on the stack.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A short, stable name for why a connection failed or ended (the report groups by it).
pub fn io_cause(e: &io::Error) -> String {
    use io::ErrorKind::*;
    match e.raw_os_error() {
        Some(libc::EADDRNOTAVAIL) => return "addr_unavailable".into(),
        Some(libc::EMFILE) | Some(libc::ENFILE) => return "too_many_open_files".into(),
        _ => {}
    }
    match e.kind() {
        ConnectionRefused => "refused".into(),
        ConnectionReset => "reset".into(),
        ConnectionAborted => "aborted".into(),
        BrokenPipe => "broken_pipe".into(),
        TimedOut => "timeout".into(),
        UnexpectedEof => "eof".into(),
        other => format!("io_{other:?}").to_lowercase(),
    }
}
