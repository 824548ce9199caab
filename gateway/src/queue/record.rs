//! How queued messages lie in the sled tree: one record per append, holding one message or a
//! run of several with consecutive sequence numbers.
//!
//! A record's key is the sequence number of its first message (big-endian, so the tree iterates
//! in queue order). The first byte tells the layout:
//!
//! - `[3][appended ms, u64 BE][expiry ms, u64 BE, 0 = none][payload]`: one message (what a
//!   single append writes).
//! - `[4][appended ms, u64 BE][count, u32 BE]` then `count` times `[expiry ms, u64 BE][length,
//!   u32 BE][payload]`: the messages of one batch append, at most [`MAX_RECORD_BYTES`] of payload
//!   each (a larger message gets a record of its own).
//! - `[1]` and `[2]`: the same two without the append time, as written before the status page
//!   showed the age of a queue's oldest message; still read (their age is unknown).
//!
//! Why several per record: a sled insert costs far more than copying a few hundred bytes (it
//! copies and may split the tree's leaf), so a batch of device readings written as one record
//! costs one insert instead of hundreds, and a run of queued readings costs sled one record's
//! overhead in memory instead of one each. The price: a record is deleted only once every one of
//! its messages is settled ([`Groups`]); a crash before that delivers the settled ones again
//! (delivery is at-least-once anyway).

use std::collections::BTreeMap;

/// Layout byte of a one-message record without its append time.
const ONE: u8 = 1;
/// Layout byte of a several-message record without its append time.
const MANY: u8 = 2;
/// Layout byte of a one-message record.
const ONE_AT: u8 = 3;
/// Layout byte of a several-message record.
const MANY_AT: u8 = 4;
/// What precedes the messages: the layout byte and the append time.
const HEADER: usize = 9;
/// Header of each message in a several-message record: expiry and length.
const ITEM_HEADER: usize = 12;
/// Most payload bytes a several-message record collects.
pub const MAX_RECORD_BYTES: usize = 4 << 10;

/// A record holding `items` in order (each `(payload, expiry)`), appended at `appended_ms`
/// (Unix milliseconds); one item makes a one-message record. Payloads must be shorter than
/// 4 GiB (the queue's byte bound is far below).
pub fn encode(items: &[(&[u8], Option<u64>)], appended_ms: u64) -> Vec<u8> {
    if let [(payload, expiry)] = items {
        let mut v = Vec::with_capacity(HEADER + 8 + payload.len());
        v.push(ONE_AT);
        v.extend_from_slice(&appended_ms.to_be_bytes());
        v.extend_from_slice(&expiry.unwrap_or(0).to_be_bytes());
        v.extend_from_slice(payload);
        return v;
    }
    let size: usize = items.iter().map(|(p, _)| ITEM_HEADER + p.len()).sum();
    let mut v = Vec::with_capacity(HEADER + 4 + size);
    v.push(MANY_AT);
    v.extend_from_slice(&appended_ms.to_be_bytes());
    v.extend_from_slice(&(items.len() as u32).to_be_bytes());
    for (payload, expiry) in items {
        v.extend_from_slice(&expiry.unwrap_or(0).to_be_bytes());
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
    }
    v
}

fn expiry(raw: [u8; 8]) -> Option<u64> {
    let at = u64::from_be_bytes(raw);
    (at != 0).then_some(at)
}

/// A record's layout: whether it holds several messages, its append time if it has one, and
/// the bytes after its header.
fn layout(raw: &[u8]) -> Option<(bool, Option<u64>, &[u8])> {
    let time = || -> Option<u64> { Some(u64::from_be_bytes(raw.get(1..HEADER)?.try_into().ok()?)) };
    match *raw.first()? {
        ONE => Some((false, None, &raw[1..])),
        MANY => Some((true, None, &raw[1..])),
        ONE_AT => Some((false, Some(time()?), &raw[HEADER..])),
        MANY_AT => Some((true, Some(time()?), &raw[HEADER..])),
        _ => None,
    }
}

/// What a record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// When it was appended (Unix milliseconds); `None` for records written before times were
    /// kept.
    pub appended_ms: Option<u64>,
    /// The messages, in order, as `(expiry, payload)`.
    pub messages: Vec<(Option<u64>, &'a [u8])>,
}

/// The messages of a record; `None` if it is not a record of ours or is cut short (then none of
/// it can be trusted).
pub fn decode(raw: &[u8]) -> Option<Decoded<'_>> {
    let (many, appended_ms, body) = layout(raw)?;
    if !many {
        let head: [u8; 8] = body.get(..8)?.try_into().ok()?;
        return Some(Decoded {
            appended_ms,
            messages: vec![(expiry(head), &body[8..])],
        });
    }
    let count = u32::from_be_bytes(body.get(..4)?.try_into().ok()?) as usize;
    let mut messages = Vec::with_capacity(count.min(body.len() / ITEM_HEADER));
    let mut at = 4;
    for _ in 0..count {
        let (exp, len) = item_header(body, at)?;
        let payload = body.get(at + ITEM_HEADER..at + ITEM_HEADER + len)?;
        messages.push((exp, payload));
        at += ITEM_HEADER + len;
    }
    (at == body.len()).then_some(Decoded {
        appended_ms,
        messages,
    })
}

fn item_header(raw: &[u8], at: usize) -> Option<(Option<u64>, usize)> {
    let exp: [u8; 8] = raw.get(at..at + 8)?.try_into().ok()?;
    let len: [u8; 4] = raw.get(at + 8..at + ITEM_HEADER)?.try_into().ok()?;
    Some((expiry(exp), u32::from_be_bytes(len) as usize))
}

/// The payload of message `index` of a record, without decoding the others' payloads.
pub fn payload_at(raw: &[u8], index: usize) -> Option<&[u8]> {
    let (many, _, body) = layout(raw)?;
    if !many {
        return if index == 0 { body.get(8..) } else { None };
    }
    let count = u32::from_be_bytes(body.get(..4)?.try_into().ok()?) as usize;
    if index >= count {
        return None;
    }
    let mut at = 4;
    for _ in 0..index {
        let (_, len) = item_header(body, at)?;
        at += ITEM_HEADER + len;
    }
    let (_, len) = item_header(body, at)?;
    body.get(at + ITEM_HEADER..at + ITEM_HEADER + len)
}

/// Splits a run of payload sizes into records: consecutive index ranges of at most
/// [`MAX_RECORD_BYTES`] of payload each (a larger message alone).
pub fn chunks(sizes: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for (i, &size) in sizes.iter().enumerate() {
        if i > start && bytes + size > MAX_RECORD_BYTES {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// A several-message record: how many messages it holds, how many are not settled yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Group {
    count: u32,
    live: u32,
}

/// Which records hold several messages, so that a message can be found in its record and the
/// record deleted once nothing in it is held. One-message records (key = the message's own
/// sequence number) need no entry.
#[derive(Debug, Default)]
pub struct Groups {
    /// First sequence number → group.
    map: BTreeMap<u64, Group>,
}

impl Groups {
    /// Records that the record at `first` holds `count` messages (`first..first + count`).
    pub fn add(&mut self, first: u64, count: u32) {
        if count > 1 {
            self.map.insert(first, Group { count, live: count });
        }
    }

    fn group_of(&self, seq: u64) -> Option<(u64, Group)> {
        let (&first, &g) = self.map.range(..=seq).next_back()?;
        (seq < first + u64::from(g.count)).then_some((first, g))
    }

    /// Where message `seq` lies: its record's key and its index in the record.
    pub fn locate(&self, seq: u64) -> (u64, usize) {
        match self.group_of(seq) {
            Some((first, _)) => (first, (seq - first) as usize),
            None => (seq, 0),
        }
    }

    /// Message `seq` has left the queue. Returns the key of its record if that record now holds
    /// nothing and should be deleted.
    pub fn settle(&mut self, seq: u64) -> Option<u64> {
        let Some((first, _)) = self.group_of(seq) else {
            return Some(seq);
        };
        let g = self.map.get_mut(&first)?;
        g.live = g.live.saturating_sub(1);
        if g.live > 0 {
            return None;
        }
        self.map.remove(&first);
        Some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damaged_ones_are_refused() {
        let one = encode(&[(b"hello", Some(7))], 1_234);
        assert_eq!(one[0], ONE_AT);
        let d = decode(&one).unwrap();
        assert_eq!(d.appended_ms, Some(1_234));
        assert_eq!(d.messages, vec![(Some(7), &b"hello"[..])]);
        assert_eq!(payload_at(&one, 0), Some(&b"hello"[..]));
        assert_eq!(payload_at(&one, 1), None);
        let items: [(&[u8], Option<u64>); 3] = [(b"a", None), (b"", Some(5)), (b"ccc", None)];
        let many = encode(&items, 99);
        let want: Vec<(Option<u64>, &[u8])> = items.iter().map(|(p, e)| (*e, *p)).collect();
        assert_eq!(
            decode(&many),
            Some(Decoded {
                appended_ms: Some(99),
                messages: want
            })
        );
        for (i, (p, _)) in items.iter().enumerate() {
            assert_eq!(payload_at(&many, i), Some(*p));
        }
        assert_eq!(payload_at(&many, 3), None);
        assert_eq!(decode(&many[..many.len() - 1]), None, "cut short");
        assert_eq!(
            decode(&[many.clone(), vec![0]].concat()),
            None,
            "trailing bytes"
        );
        assert_eq!(decode(&[9, 1, 2]), None, "unknown layout");
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[ONE_AT, 1, 2]), None, "a time cut short");
        // A count that promises more than the bytes hold does not allocate for it.
        assert_eq!(decode(&[MANY, 255, 255, 255, 255]), None);
    }

    #[test]
    fn records_written_before_append_times_are_still_read() {
        // Layout 1: [1][expiry][payload]; layout 2: [2][count] then [expiry][length][payload].
        let one = [&[ONE][..], &7u64.to_be_bytes(), b"hi"].concat();
        let d = decode(&one).unwrap();
        assert_eq!(d.appended_ms, None);
        assert_eq!(d.messages, vec![(Some(7), &b"hi"[..])]);
        assert_eq!(payload_at(&one, 0), Some(&b"hi"[..]));
        let many = [
            &[MANY][..],
            &2u32.to_be_bytes(),
            &0u64.to_be_bytes(),
            &1u32.to_be_bytes(),
            b"a",
            &5u64.to_be_bytes(),
            &2u32.to_be_bytes(),
            b"bb",
        ]
        .concat();
        let d = decode(&many).unwrap();
        assert_eq!(d.appended_ms, None);
        assert_eq!(d.messages, vec![(None, &b"a"[..]), (Some(5), &b"bb"[..])]);
        assert_eq!(payload_at(&many, 1), Some(&b"bb"[..]));
    }

    #[test]
    fn chunks_stay_under_the_record_size_and_keep_big_messages_alone() {
        assert_eq!(chunks(&[]), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(chunks(&[10, 10, 10]), vec![0..3]);
        let half = MAX_RECORD_BYTES / 2;
        assert_eq!(chunks(&[half, half, 1]), vec![0..2, 2..3]);
        assert_eq!(
            chunks(&[1, MAX_RECORD_BYTES * 3, 1]),
            vec![0..1, 1..2, 2..3]
        );
    }

    #[test]
    fn a_group_is_deleted_once_all_of_it_is_settled() {
        let mut g = Groups::default();
        g.add(10, 3);
        g.add(13, 1); // a one-message record needs no entry
        assert_eq!(g.locate(9), (9, 0));
        assert_eq!(g.locate(11), (10, 1));
        assert_eq!(g.locate(12), (10, 2));
        assert_eq!(g.locate(13), (13, 0));
        assert_eq!(g.settle(11), None);
        assert_eq!(g.settle(13), Some(13));
        assert_eq!(g.settle(10), None);
        assert_eq!(g.settle(12), Some(10));
        assert_eq!(g.locate(11), (11, 0), "forgotten once deleted");
    }
}
