//! The tar format, as much of it as sandbox file transfer needs: regular
//! files, directories and symbolic links, with GNU long names and PAX paths
//! read and GNU long names written. Readable by GNU tar, bsdtar and busybox.

use std::io::{self, Read, Write};

const BLOCK: usize = 512;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// Any other type flag (hard links, devices, FIFOs...): not transferred.
    Other(u8),
}

/// One entry's header: its data (`size` bytes) follows for a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    /// Relative path, `/`-separated, as bytes (file names need not be UTF-8).
    pub path: Vec<u8>,
    /// A symbolic link's target.
    pub link: Vec<u8>,
    pub mode: u32,
    pub size: u64,
    /// Seconds since the epoch.
    pub mtime: u64,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Writes `value` as NUL-terminated octal into `field`, or base-256 if it does not fit.
fn put_number(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let octal = format!("{value:0digits$o}");
    if octal.len() <= digits {
        field[..digits].copy_from_slice(octal.as_bytes());
        field[digits] = 0;
    } else {
        // GNU's base-256: the high bit of the first byte set, big-endian after it.
        field.fill(0);
        let bytes = value.to_be_bytes();
        let n = field.len();
        field[n - 8..].copy_from_slice(&bytes);
        field[0] |= 0x80;
    }
}

fn get_number(field: &[u8]) -> io::Result<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(*b)))
                .ok_or_else(|| invalid("number too large"))?;
        }
        return Ok(v);
    }
    let text: Vec<u8> = field.iter().copied().take_while(|b| *b != 0).filter(|b| *b != b' ').collect();
    if text.is_empty() {
        return Ok(0);
    }
    let text = std::str::from_utf8(&text).map_err(|_| invalid("bad number in header"))?;
    u64::from_str_radix(text, 8).map_err(|_| invalid(format!("bad number in header: {text:?}")))
}

fn checksum(block: &[u8; BLOCK]) -> u64 {
    block.iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { u64::from(*b) }).sum()
}

fn header_block(name: &[u8], link: &[u8], flag: u8, mode: u32, size: u64, mtime: u64) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    b[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    put_number(&mut b[100..108], u64::from(mode & 0o7777));
    put_number(&mut b[108..116], 0);
    put_number(&mut b[116..124], 0);
    put_number(&mut b[124..136], size);
    put_number(&mut b[136..148], mtime);
    b[156] = flag;
    b[157..157 + link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    let sum = checksum(&b);
    b[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    b[155] = b' ';
    b
}

/// Zeros that pad `size` bytes of data to a whole block.
pub fn padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

/// Writes an entry's header, with GNU long-name entries before it when
/// its path or link is longer than the header holds. A file's data and
/// [`padding`] follow.
pub fn write_header(out: &mut impl Write, h: &Header) -> io::Result<()> {
    for (long, flag) in [(&h.link, b'K'), (&h.path, b'L')] {
        if long.len() > 100 {
            let mut data = long.clone();
            data.push(0);
            out.write_all(&header_block(b"././@LongLink", b"", flag, 0o644, data.len() as u64, 0))?;
            out.write_all(&data)?;
            out.write_all(&[0u8; BLOCK][..padding(data.len() as u64)])?;
        }
    }
    let (flag, size) = match h.kind {
        Kind::File => (b'0', h.size),
        Kind::Dir => (b'5', 0),
        Kind::Symlink => (b'2', 0),
        Kind::Other(f) => (f, 0),
    };
    out.write_all(&header_block(&h.path, &h.link, flag, h.mode, size, h.mtime))
}

/// The end of an archive: two zero blocks.
pub fn write_end(out: &mut impl Write) -> io::Result<()> {
    out.write_all(&[0u8; 2 * BLOCK])
}

/// Reads entries one after the other; after each header, read its data with
/// [`Reader::data`] (or it is skipped).
pub struct Reader<R> {
    inner: R,
    /// Data (and padding) of the current entry not yet read.
    left: u64,
    pad: usize,
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Self {
        Reader { inner, left: 0, pad: 0 }
    }

    fn skip_rest(&mut self) -> io::Result<()> {
        let n = io::copy(&mut (&mut self.inner).take(self.left + self.pad as u64), &mut io::sink())?;
        if n != self.left + self.pad as u64 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the archive ended inside an entry"));
        }
        self.left = 0;
        self.pad = 0;
        Ok(())
    }

    fn block(&mut self) -> io::Result<Option<[u8; BLOCK]>> {
        let mut b = [0u8; BLOCK];
        let mut got = 0;
        while got < BLOCK {
            match self.inner.read(&mut b[got..])? {
                0 if got == 0 => return Ok(None),
                0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the archive ended inside a header")),
                n => got += n,
            }
        }
        Ok(Some(b))
    }

    fn long_data(&mut self, size: u64) -> io::Result<Vec<u8>> {
        if size > 1 << 20 {
            return Err(invalid("an extended header longer than 1 MiB"));
        }
        let mut data = vec![0u8; size as usize];
        self.inner.read_exact(&mut data)?;
        let mut pad = [0u8; BLOCK];
        self.inner.read_exact(&mut pad[..padding(size)])?;
        Ok(data)
    }

    /// The next entry's header; `None` at the end of the archive.
    pub fn next_header(&mut self) -> io::Result<Option<Header>> {
        self.skip_rest()?;
        let (mut long_path, mut long_link) = (None, None);
        loop {
            let Some(b) = self.block()? else {
                return Ok(None);
            };
            if b.iter().all(|x| *x == 0) {
                return Ok(None);
            }
            let sum = get_number(&b[148..156])?;
            if sum != checksum(&b) {
                return Err(invalid("a header's checksum is wrong: not a tar archive, or a damaged one"));
            }
            let size = get_number(&b[124..136])?;
            let flag = b[156];
            match flag {
                b'L' => long_path = Some(trim_nul(self.long_data(size)?)),
                b'K' => long_link = Some(trim_nul(self.long_data(size)?)),
                b'x' => {
                    let data = self.long_data(size)?;
                    for (key, value) in pax_records(&data)? {
                        match key {
                            b"path" => long_path = Some(value.to_vec()),
                            b"linkpath" => long_link = Some(value.to_vec()),
                            _ => {}
                        }
                    }
                }
                b'g' => {
                    self.long_data(size)?;
                }
                _ => {
                    let field = |r: std::ops::Range<usize>| trim_nul(b[r].to_vec());
                    let mut path = field(0..100);
                    let ustar = &b[257..262] == b"ustar";
                    let prefix = if ustar { field(345..500) } else { Vec::new() };
                    if !prefix.is_empty() {
                        path = [prefix, b"/".to_vec(), path].concat();
                    }
                    let kind = match flag {
                        b'0' | 0 | b'7' => Kind::File,
                        b'5' => Kind::Dir,
                        b'2' => Kind::Symlink,
                        other => Kind::Other(other),
                    };
                    let header = Header {
                        kind,
                        path: long_path.unwrap_or(path),
                        link: long_link.unwrap_or_else(|| field(157..257)),
                        mode: get_number(&b[100..108])? as u32,
                        size: if kind == Kind::Dir || kind == Kind::Symlink { 0 } else { size },
                        mtime: get_number(&b[136..148]).unwrap_or(0),
                    };
                    self.left = header.size;
                    self.pad = padding(header.size);
                    return Ok(Some(header));
                }
            }
        }
    }

    /// What follows the end of the archive (some writers pad to a record size).
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The current entry's data; whatever is left unread is skipped at the next header.
    pub fn data(&mut self) -> EntryData<'_, R> {
        EntryData { reader: self }
    }
}

/// Reads one entry's data out of a [`Reader`].
pub struct EntryData<'a, R> {
    reader: &'a mut Reader<R>,
}

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = &mut self.reader;
        if r.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(r.left).unwrap_or(usize::MAX));
        let n = r.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the archive ended inside a file"));
        }
        r.left -= n as u64;
        Ok(n)
    }
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    if let Some(end) = v.iter().position(|b| *b == 0) {
        v.truncate(end);
    }
    v
}

/// PAX records: `LEN KEY=VALUE\n`, LEN counting the whole record.
fn pax_records(mut data: &[u8]) -> io::Result<Vec<(&[u8], &[u8])>> {
    let mut out = Vec::new();
    while !data.is_empty() && data[0] != 0 {
        let space = data.iter().position(|b| *b == b' ').ok_or_else(|| invalid("bad PAX record"))?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|l| *l > space + 1 && *l <= data.len())
            .ok_or_else(|| invalid("bad PAX record length"))?;
        let record = &data[space + 1..len - 1];
        let eq = record.iter().position(|b| *b == b'=').ok_or_else(|| invalid("bad PAX record"))?;
        out.push((&record[..eq], &record[eq + 1..]));
        data = &data[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: Kind, path: &str, link: &str, data: &[u8]) -> (Header, Vec<u8>) {
        let h = Header {
            kind,
            path: path.as_bytes().to_vec(),
            link: link.as_bytes().to_vec(),
            mode: 0o640,
            size: data.len() as u64,
            mtime: 1_700_000_000,
        };
        (h, data.to_vec())
    }

    #[test]
    fn what_is_written_reads_back_with_long_names_and_every_kind() {
        let long = format!("dir/{}", "n".repeat(180));
        let entries = [
            entry(Kind::Dir, "dir/", "", b""),
            entry(Kind::File, "dir/a.csv", "", b"x,y\n1,2\n"),
            entry(Kind::File, &long, "", &[7u8; 1300]),
            entry(Kind::Symlink, "dir/link", &"t".repeat(150), b""),
            entry(Kind::File, "dir/empty", "", b""),
        ];
        let mut archive = Vec::new();
        for (h, data) in &entries {
            write_header(&mut archive, h).unwrap();
            archive.extend_from_slice(data);
            archive.extend(std::iter::repeat_n(0, padding(data.len() as u64)));
        }
        write_end(&mut archive).unwrap();
        assert_eq!(archive.len() % BLOCK, 0);
        let mut r = Reader::new(&archive[..]);
        for (h, data) in &entries {
            let got = r.next_header().unwrap().expect("an entry");
            assert_eq!(&got, h);
            let mut read = Vec::new();
            r.data().read_to_end(&mut read).unwrap();
            assert_eq!(&read, data);
        }
        assert!(r.next_header().unwrap().is_none());
    }

    #[test]
    fn unread_data_is_skipped_and_a_truncated_archive_is_an_error() {
        let mut archive = Vec::new();
        let (h, data) = entry(Kind::File, "a", "", &[1u8; 700]);
        write_header(&mut archive, &h).unwrap();
        archive.extend_from_slice(&data);
        archive.extend(std::iter::repeat_n(0, padding(700)));
        let (h2, _) = entry(Kind::Dir, "b/", "", b"");
        write_header(&mut archive, &h2).unwrap();
        let mut r = Reader::new(&archive[..]);
        r.next_header().unwrap();
        assert_eq!(r.next_header().unwrap().unwrap().path, b"b/");
        let mut r = Reader::new(&archive[..600]);
        r.next_header().unwrap();
        assert!(r.next_header().is_err());
    }

    #[test]
    fn a_damaged_header_is_refused() {
        let mut archive = Vec::new();
        write_header(&mut archive, &entry(Kind::File, "a", "", b"").0).unwrap();
        archive[0] = b'b';
        let err = Reader::new(&archive[..]).next_header().unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn numbers_too_big_for_octal_use_base_256() {
        let mut field = [0u8; 12];
        put_number(&mut field, 1 << 40);
        assert_eq!(field[0] & 0x80, 0x80);
        assert_eq!(get_number(&field).unwrap(), 1 << 40);
        put_number(&mut field, 0o777);
        assert_eq!(get_number(&field).unwrap(), 0o777);
    }

    #[test]
    fn pax_paths_are_read() {
        let records = b"29 path=a/very/long/name.csv\n";
        assert_eq!(pax_records(records).unwrap(), vec![(&b"path"[..], &b"a/very/long/name.csv"[..])]);
    }
}
