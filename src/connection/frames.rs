//! The HTTP/2 frame scanner (pure): where a client's bytes are, frame by frame.

/// Follows an HTTP/2 client's bytes frame by frame, far enough to see when a
/// request head is partly received: a header block (HEADERS and its
/// CONTINUATIONs) begun and not complete, or any other frame but DATA cut
/// short (all small, and sent whole by a client that is not stalling on
/// purpose). DATA payloads are request bodies, which may well arrive slowly.
/// hyper and h2 do not time a head, so without this a client could dribble
/// one for as long as `idle_timeout`.
pub(super) struct FrameScan {
    /// Bytes of the client's connection preface still to come.
    preface_left: usize,
    /// The frame header being received, and how much of it has arrived.
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: usize,
    /// Whether the current frame is DATA.
    data: bool,
    /// Whether the current frame ends its header block (END_HEADERS).
    ends_block: bool,
    /// Inside a header block: more CONTINUATION frames are due.
    in_block: bool,
    /// Whether a whole header block has been received: the first request
    /// head is timed from the accept instead.
    first_head_done: bool,
}

const FRAME_HEADER_LEN: usize = 9;
const PREFACE_LEN: usize = 24;
const FRAME_DATA: u8 = 0x0;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_HEADERS: u8 = 0x4;

impl FrameScan {
    pub(super) fn new() -> Self {
        FrameScan {
            preface_left: PREFACE_LEN,
            header: [0; FRAME_HEADER_LEN],
            header_len: 0,
            payload_left: 0,
            data: false,
            ends_block: false,
            in_block: false,
            first_head_done: false,
        }
    }

    /// Whether a whole header block has been received.
    pub(super) fn first_head_done(&self) -> bool {
        self.first_head_done
    }

    /// Whether a head (or a frame but DATA) is partly received.
    pub(super) fn partial(&self) -> bool {
        self.header_len > 0 || self.in_block || (self.payload_left > 0 && !self.data)
    }

    /// Follow the next bytes the client sent; true if a partly received head
    /// was completed among them.
    pub(super) fn scan(&mut self, mut bytes: &[u8]) -> bool {
        let preface = self.preface_left.min(bytes.len());
        self.preface_left -= preface;
        bytes = &bytes[preface..];
        let mut ended = false;
        while !bytes.is_empty() {
            let was_partial = self.partial();
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
                if self.payload_left == 0 {
                    self.frame_done();
                }
            } else {
                let n = (FRAME_HEADER_LEN - self.header_len).min(bytes.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
                self.header_len += n;
                bytes = &bytes[n..];
                if self.header_len == FRAME_HEADER_LEN {
                    self.frame_header_done();
                }
            }
            ended |= was_partial && !self.partial();
        }
        ended
    }

    pub(super) fn frame_header_done(&mut self) {
        let [l0, l1, l2, kind, flags, ..] = self.header;
        self.header_len = 0;
        self.payload_left = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
        self.data = kind == FRAME_DATA;
        self.ends_block = matches!(kind, FRAME_HEADERS | FRAME_CONTINUATION) && flags & FLAG_END_HEADERS != 0;
        if kind == FRAME_HEADERS {
            self.in_block = true;
        }
        if self.payload_left == 0 {
            self.frame_done();
        }
    }

    pub(super) fn frame_done(&mut self) {
        if self.ends_block {
            self.in_block = false;
            self.ends_block = false;
            self.first_head_done = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// The preface, an empty SETTINGS frame and a whole first request head.
    fn opening() -> Vec<u8> {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, 0, &[]));
        bytes.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS | 0x1, 1, &[0x82, 0x87, 0x84]));
        bytes
    }

    #[test]
    fn a_whole_first_head_leaves_nothing_partial() {
        let mut scan = FrameScan::new();
        assert!(scan.scan(&opening()));
        assert!(scan.first_head_done);
        assert!(!scan.partial());
    }

    #[test]
    fn the_first_head_is_not_done_before_its_last_byte() {
        let bytes = opening();
        let mut scan = FrameScan::new();
        scan.scan(&bytes[..bytes.len() - 1]);
        assert!(!scan.first_head_done);
        assert!(scan.partial());
        assert!(scan.scan(&bytes[bytes.len() - 1..]));
        assert!(scan.first_head_done && !scan.partial());
    }

    #[test]
    fn a_header_block_is_partial_until_its_end_headers() {
        let mut scan = FrameScan::new();
        scan.scan(&opening());
        assert!(!scan.scan(&frame(FRAME_HEADERS, 0, 3, &[0x82, 0x87])));
        assert!(scan.partial(), "HEADERS without END_HEADERS");
        assert!(!scan.scan(&frame(FRAME_CONTINUATION, 0, 3, &[0x84])));
        assert!(scan.partial(), "CONTINUATION without END_HEADERS");
        assert!(scan.scan(&frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 3, &[])));
        assert!(!scan.partial());
    }

    #[test]
    fn a_slow_request_body_is_not_a_partial_head() {
        let mut scan = FrameScan::new();
        scan.scan(&opening());
        let data = frame(FRAME_DATA, 0, 1, &[7; 1000]);
        scan.scan(&data[..5]);
        assert!(scan.partial(), "a frame header cut short");
        assert!(scan.scan(&data[5..100]));
        assert!(!scan.partial(), "half a DATA payload");
        assert!(!scan.scan(&data[100..]));
        assert!(!scan.partial());
    }

    #[test]
    fn other_frames_cut_short_are_partial() {
        let mut scan = FrameScan::new();
        scan.scan(&opening());
        let ping = frame(0x6, 0, 0, &[1; 8]);
        scan.scan(&ping[..12]);
        assert!(scan.partial());
        assert!(scan.scan(&ping[12..]));
        assert!(!scan.partial());
    }

    #[test]
    fn byte_at_a_time_ends_where_whole_reads_end() {
        let mut bytes = opening();
        bytes.extend(frame(FRAME_DATA, 0x1, 1, b"body"));
        bytes.extend(frame(FRAME_HEADERS, 0, 3, &[0x82]));
        bytes.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 3, &[0x84]));
        let mut whole = FrameScan::new();
        whole.scan(&bytes);
        let mut dribbled = FrameScan::new();
        let mut partial_at = Vec::new();
        for (i, b) in bytes.iter().enumerate() {
            dribbled.scan(std::slice::from_ref(b));
            if dribbled.partial() {
                partial_at.push(i);
            }
        }
        assert!(!whole.partial() && !dribbled.partial());
        assert!(whole.first_head_done && dribbled.first_head_done);
        // Never partial inside the DATA payload: the 4 body bytes after
        // the opening and DATA's frame header.
        let body = opening().len() + FRAME_HEADER_LEN;
        assert!((body..body + 4).all(|i| !partial_at.contains(&i)));
        assert!(partial_at.contains(&(body + 4)), "the next frame header");
    }
}
