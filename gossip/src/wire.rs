//! Wire formats: request-response frames, announcements and the state manifest.
//!
//! Every frame is `u32 big-endian length ++ body`, and the length is checked against the
//! protocol's limit *before* the body is read, so an oversized or garbage frame costs the reader
//! four bytes and an error, never a large allocation. Bodies with a fixed layout (digests,
//! heights, blobs) are raw bytes; the state manifest is bincode 2 with a fixed configuration
//! (little-endian, fixed-width integers, a decode limit) and must be consumed exactly.

use std::{io, marker::PhantomData, sync::Arc};

use bytes::Bytes;
use libp2p::{
    StreamProtocol,
    futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    request_response,
};

use crate::{Digest, counters::ProtocolCounters};

/// Smallest chunk size a state manifest may use (unless the checkpoint is smaller).
const MIN_CHUNK: u64 = 4096;

/// Upper bound of one bincode-decoded value (the frame limit is usually much smaller).
const BINCODE_LIMIT: usize = 256 << 20;

/// The one bincode configuration used for everything this crate encodes.
fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<BINCODE_LIMIT>()
}

/// Encodes `value` with the crate's bincode configuration.
pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Encoding plain structs of integers and byte vectors into a Vec cannot fail.
    bincode::serde::encode_to_vec(value, bincode_config()).unwrap_or_default()
}

/// Decodes `bytes` completely (trailing bytes are an error).
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, bincode_config())
        .map_err(|e| invalid(format!("undecodable frame: {e}")))?;
    if used != bytes.len() {
        return Err(invalid(format!(
            "{} trailing bytes after frame",
            bytes.len() - used
        )));
    }
    Ok(value)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// `/cohort/<chain-id>/blob/1`: fetch one blob by digest.
pub(crate) fn blob_protocol(chain_id: &str) -> StreamProtocol {
    StreamProtocol::try_from_owned(format!("/cohort/{chain_id}/blob/1"))
        .expect("protocol name starts with '/'")
}

/// `/cohort/<chain-id>/state/1`: ask for the state manifest from a height.
pub(crate) fn state_protocol(chain_id: &str) -> StreamProtocol {
    StreamProtocol::try_from_owned(format!("/cohort/{chain_id}/state/1"))
        .expect("protocol name starts with '/'")
}

/// `/cohort/<chain-id>/kad/1.0.0`: our own Kademlia DHT, apart from IPFS's.
pub(crate) fn kad_protocol(chain_id: &str) -> StreamProtocol {
    StreamProtocol::try_from_owned(format!("/cohort/{chain_id}/kad/1.0.0"))
        .expect("protocol name starts with '/'")
}

/// Identify's protocol version: peers announcing another chain are disconnected.
pub(crate) fn identify_version(chain_id: &str) -> String {
    format!("/cohort/{chain_id}/1.0.0")
}

/// A body with its own byte layout.
pub(crate) trait Frame: Sized + Send {
    fn encode(self) -> Vec<u8>;
    fn decode(bytes: Vec<u8>) -> io::Result<Self>;
}

/// Request on the blob protocol: the digest wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlobRequest(pub Digest);

impl Frame for BlobRequest {
    fn encode(self) -> Vec<u8> {
        self.0.0.to_vec()
    }
    fn decode(bytes: Vec<u8>) -> io::Result<Self> {
        <[u8; 32]>::try_from(bytes.as_slice())
            .map(|d| BlobRequest(Digest(d)))
            .map_err(|_| invalid(format!("blob request of {} bytes", bytes.len())))
    }
}

/// Response on the blob protocol. The requester checks the bytes against the digest it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BlobResponse {
    NotFound,
    Found(Bytes),
}

impl Frame for BlobResponse {
    fn encode(self) -> Vec<u8> {
        match self {
            BlobResponse::NotFound => vec![0],
            BlobResponse::Found(bytes) => {
                let mut out = Vec::with_capacity(bytes.len() + 1);
                out.push(1);
                out.extend_from_slice(&bytes);
                out
            }
        }
    }
    fn decode(mut bytes: Vec<u8>) -> io::Result<Self> {
        match bytes.first() {
            Some(0) if bytes.len() == 1 => Ok(BlobResponse::NotFound),
            Some(1) => {
                bytes.remove(0);
                Ok(BlobResponse::Found(bytes.into()))
            }
            _ => Err(invalid("bad blob response tag".into())),
        }
    }
}

/// Request on the state protocol: the requester has every commit certificate below `from_height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StateRequest {
    pub from_height: u64,
}

impl Frame for StateRequest {
    fn encode(self) -> Vec<u8> {
        self.from_height.to_be_bytes().to_vec()
    }
    fn decode(bytes: Vec<u8>) -> io::Result<Self> {
        <[u8; 8]>::try_from(bytes.as_slice())
            .map(|b| StateRequest {
                from_height: u64::from_be_bytes(b),
            })
            .map_err(|_| invalid(format!("state request of {} bytes", bytes.len())))
    }
}

/// What a peer offers for a state sync: the checkpoint is described chunk by chunk and each chunk
/// is then fetched by digest on the blob protocol.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct StateManifest {
    pub checkpoint: Option<CheckpointManifest>,
    pub certificates: Vec<Vec<u8>>,
}

/// A checkpoint cut into chunks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct CheckpointManifest {
    /// Opaque metadata from the serving node (e.g. height and parameter hash).
    pub meta: Vec<u8>,
    /// Length of the whole checkpoint.
    pub total_len: u64,
    /// sha256 of the whole checkpoint.
    pub digest: Digest,
    /// Every chunk is this long except the last.
    pub chunk_size: u64,
    /// sha256 of each chunk, in order.
    pub chunks: Vec<Digest>,
}

impl CheckpointManifest {
    /// Cuts `bytes` into chunks of `chunk_size` and describes them.
    pub fn build(meta: Vec<u8>, bytes: &[u8], chunk_size: usize) -> (Self, Vec<&[u8]>) {
        let chunks: Vec<&[u8]> = bytes.chunks(chunk_size.max(1)).collect();
        let manifest = CheckpointManifest {
            meta,
            total_len: bytes.len() as u64,
            digest: Digest::of(bytes),
            chunk_size: chunk_size as u64,
            chunks: chunks.iter().map(|c| Digest::of(c)).collect(),
        };
        (manifest, chunks)
    }

    /// Checks that the chunk layout is consistent and within `max_total` and `max_chunk`.
    pub fn check(&self, max_total: usize, max_chunk: usize) -> Result<(), String> {
        if self.total_len > max_total as u64 {
            return Err(format!(
                "checkpoint of {} bytes exceeds the {max_total}-byte limit",
                self.total_len
            ));
        }
        // Tiny chunks would turn one sync into a flood of requests.
        let min_chunk = MIN_CHUNK.min(self.total_len.max(1));
        if self.chunk_size < min_chunk || self.chunk_size > max_chunk as u64 {
            return Err(format!("chunk size {} out of range", self.chunk_size));
        }
        let expected = self.total_len.div_ceil(self.chunk_size);
        if self.chunks.len() as u64 != expected {
            return Err(format!(
                "{} chunk digests for {} bytes in chunks of {}",
                self.chunks.len(),
                self.total_len,
                self.chunk_size
            ));
        }
        Ok(())
    }

    /// Length of chunk `index`.
    pub fn chunk_len(&self, index: usize) -> u64 {
        let start = index as u64 * self.chunk_size;
        self.chunk_size.min(self.total_len.saturating_sub(start))
    }
}

/// Response on the state protocol.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum StateResponse {
    Unavailable,
    Manifest(StateManifest),
}

impl Frame for StateResponse {
    fn encode(self) -> Vec<u8> {
        encode(&self)
    }
    fn decode(bytes: Vec<u8>) -> io::Result<Self> {
        decode(&bytes)
    }
}

/// What an announce-fetch topic gossips: the payload's digest and length, and a nonce that is
/// new for every publish, so re-announcing the same payload (a node re-publishing its delta after
/// a partition, say) is a new gossip message rather than a duplicate that gossipsub drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Announcement {
    pub digest: Digest,
    pub len: u64,
    pub nonce: u64,
}

impl Announcement {
    pub const LEN: usize = 48;

    pub fn encode(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        out.extend_from_slice(&self.digest.0);
        out.extend_from_slice(&self.len.to_be_bytes());
        out.extend_from_slice(&self.nonce.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::LEN {
            return None;
        }
        let digest = <[u8; 32]>::try_from(&bytes[..32]).ok()?;
        let len = <[u8; 8]>::try_from(&bytes[32..40]).ok()?;
        let nonce = <[u8; 8]>::try_from(&bytes[40..]).ok()?;
        Some(Announcement {
            digest: Digest(digest),
            len: u64::from_be_bytes(len),
            nonce: u64::from_be_bytes(nonce),
        })
    }
}

/// Length-prefixed request-response codec with a size limit per direction.
pub(crate) struct FrameCodec<Req, Resp> {
    max_request: usize,
    max_response: usize,
    counters: Arc<ProtocolCounters>,
    _frames: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> FrameCodec<Req, Resp> {
    pub fn new(max_request: usize, max_response: usize, counters: Arc<ProtocolCounters>) -> Self {
        FrameCodec {
            max_request,
            max_response,
            counters,
            _frames: PhantomData,
        }
    }
}

impl<Req, Resp> Clone for FrameCodec<Req, Resp> {
    fn clone(&self) -> Self {
        FrameCodec::new(self.max_request, self.max_response, self.counters.clone())
    }
}

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(invalid(format!("frame of {len} bytes exceeds {max}")));
    }
    // Grow with the data actually received instead of trusting the length up front.
    let mut body = Vec::with_capacity(len.min(64 << 10));
    (&mut *io).take(len as u64).read_to_end(&mut body).await?;
    if body.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("frame truncated at {} of {len} bytes", body.len()),
        ));
    }
    Ok(body)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    body: &[u8],
    max: usize,
) -> io::Result<()> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|_| body.len() <= max)
        .ok_or_else(|| {
            invalid(format!(
                "refusing to send a frame of {} bytes (limit {max})",
                body.len()
            ))
        })?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(body).await?;
    io.flush().await
}

impl<Req: Frame + 'static, Resp: Frame + 'static> request_response::Codec
    for FrameCodec<Req, Resp>
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        let body = read_frame(io, self.max_request).await?;
        self.counters.received(4 + body.len());
        Req::decode(body)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        let body = read_frame(io, self.max_response).await?;
        self.counters.received(4 + body.len());
        Resp::decode(body)
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Req) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let body = req.encode();
        write_frame(io, &body, self.max_request).await?;
        self.counters.sent(4 + body.len());
        Ok(())
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let body = res.encode();
        write_frame(io, &body, self.max_response).await?;
        self.counters.sent(4 + body.len());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use libp2p::futures::{executor::block_on, io::Cursor};
    use request_response::Codec as _;

    use super::*;

    fn codec() -> FrameCodec<BlobRequest, BlobResponse> {
        FrameCodec::new(32, 1024, Arc::new(ProtocolCounters::default()))
    }

    #[test]
    fn blob_frames_round_trip() {
        let proto = blob_protocol("t");
        let mut c = codec();
        let mut buf = Vec::new();
        block_on(c.write_response(
            &proto,
            &mut buf,
            BlobResponse::Found(Bytes::from_static(b"hello")),
        ))
        .unwrap();
        assert_eq!(&buf[..4], &6u32.to_be_bytes());
        let got = block_on(c.read_response(&proto, &mut Cursor::new(buf))).unwrap();
        assert_eq!(got, BlobResponse::Found(Bytes::from_static(b"hello")));

        let mut buf = Vec::new();
        let d = Digest::of(b"x");
        block_on(c.write_request(&proto, &mut buf, BlobRequest(d))).unwrap();
        let got = block_on(c.read_request(&proto, &mut Cursor::new(buf))).unwrap();
        assert_eq!(got, BlobRequest(d));
        assert_eq!(c.counters.snapshot().bytes_out, 4 + 6 + 4 + 32);
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors() {
        let proto = blob_protocol("t");
        let mut c = codec();
        // Claims 4 GiB; must fail on the length alone.
        let huge = u32::MAX.to_be_bytes().to_vec();
        let err = block_on(c.read_response(&proto, &mut Cursor::new(huge))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // Truncated body.
        let mut short = 100u32.to_be_bytes().to_vec();
        short.extend_from_slice(&[1; 10]);
        assert!(block_on(c.read_response(&proto, &mut Cursor::new(short))).is_err());
        // Unknown tag.
        let mut bad = 2u32.to_be_bytes().to_vec();
        bad.extend_from_slice(&[7, 7]);
        assert!(block_on(c.read_response(&proto, &mut Cursor::new(bad))).is_err());
        // A request that is not 32 bytes.
        let mut bad = 3u32.to_be_bytes().to_vec();
        bad.extend_from_slice(&[1, 2, 3]);
        assert!(block_on(c.read_request(&proto, &mut Cursor::new(bad))).is_err());
        // Writing over the limit is refused too.
        let mut sink = Vec::new();
        assert!(
            block_on(c.write_response(
                &proto,
                &mut sink,
                BlobResponse::Found(vec![0; 2048].into())
            ))
            .is_err()
        );
    }

    #[test]
    fn state_response_round_trips_and_rejects_trailing_bytes() {
        let resp = StateResponse::Manifest(StateManifest {
            checkpoint: None,
            certificates: vec![b"c1".to_vec(), vec![]],
        });
        let bytes = resp.clone().encode();
        assert_eq!(StateResponse::decode(bytes.clone()).unwrap(), resp);
        let mut longer = bytes;
        longer.push(0);
        assert!(StateResponse::decode(longer).is_err());
        assert!(StateResponse::decode(vec![9, 9, 9, 9]).is_err());
    }

    #[test]
    fn manifest_layout_checks() {
        let data: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        let (m, chunks) = CheckpointManifest::build(b"meta".to_vec(), &data, 1000);
        assert_eq!(chunks.len(), 3);
        assert_eq!(m.chunk_len(2), 500);
        assert!(m.check(10_000, 1000).is_err(), "chunks under 4 KiB");
        let data: Vec<u8> = (0..25_000u32).map(|i| i as u8).collect();
        let (m, chunks) = CheckpointManifest::build(b"meta".to_vec(), &data, 10_000);
        assert_eq!(chunks.len(), 3);
        assert_eq!(m.chunk_len(2), 5_000);
        assert_eq!(m.check(100_000, 10_000), Ok(()));
        assert!(m.check(20_000, 10_000).is_err());
        assert!(m.check(100_000, 9_999).is_err());
        let mut lying = m.clone();
        lying.chunks.pop();
        assert!(lying.check(100_000, 10_000).is_err());
        let small = CheckpointManifest::build(vec![], &[1, 2, 3], 1000).0;
        assert_eq!(small.check(10, 1000), Ok(()));
        let empty = CheckpointManifest::build(vec![], &[], 1000).0;
        assert_eq!(empty.check(10, 1000), Ok(()));
        assert!(empty.chunks.is_empty());
    }

    #[test]
    fn announcement_round_trips() {
        let a = Announcement {
            nonce: 7,
            digest: Digest::of(b"delta"),
            len: 4 << 20,
        };
        assert_eq!(Announcement::decode(&a.encode()), Some(a));
        assert_eq!(Announcement::decode(&[0; 47]), None);
    }
}
