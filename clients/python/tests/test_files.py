"""Files: writes and reads, listings, removal, streamed transfers, tar, and files that
persist between execs."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from typing import Iterator

from emberd import FileList, Sandbox


def test_write_and_read_round_trip(sb: Sandbox) -> None:
    data = bytes(range(256)) * 4
    w = sb.files.write("/tmp/rt/bin.dat", data)
    assert (w.path, w.bytes) == ("/tmp/rt/bin.dat", len(data))
    assert sb.files.read("/tmp/rt/bin.dat") == data
    sb.files.write("/tmp/rt/text.txt", "héllo\n")
    assert sb.files.read_text("/tmp/rt/text.txt") == "héllo\n"
    sb.files.write("/tmp/rt/from-file", io.BytesIO(b"file object"))
    assert sb.files.read("/tmp/rt/from-file") == b"file object"


def test_files_persist_between_execs(sb: Sandbox) -> None:
    sb.files.write("/home/sandbox/state.txt", "1")
    r = sb.exec("p = '/home/sandbox/state.txt'\nn = int(open(p).read())\nopen(p, 'w').write(str(n + 1))\nprint(n)")
    assert r.stdout == "1\n"
    assert sb.exec("print(open('/home/sandbox/state.txt').read())").stdout == "2\n"
    assert sb.files.read("/home/sandbox/state.txt") == b"2"


def test_mode_and_stat(sb: Sandbox) -> None:
    sb.files.write("/tmp/rt/run.sh", "#!/bin/sh\necho ran\n", mode=0o755)
    st = sb.files.stat("/tmp/rt/run.sh")
    assert (st.type, st.size, st.mode) == ("file", 19, "0755") and st.mtime.endswith("Z")
    assert sb.exec("import subprocess; print(subprocess.run(['/tmp/rt/run.sh'], capture_output=True, text=True).stdout, end='')").stdout == "ran\n"
    assert sb.files.stat("/tmp/rt").is_dir


def test_list_mkdir_and_remove(sb: Sandbox) -> None:
    sb.files.mkdir("/tmp/tree/a/b")
    sb.files.write("/tmp/tree/a/b/c.txt", "c")
    sb.files.write("/tmp/tree/top.txt", "top")
    top = sb.files.list("/tmp/tree")
    assert isinstance(top, FileList) and not top.truncated
    assert sorted((e.name, e.type) for e in top) == [("a", "dir"), ("top.txt", "file")]
    deep = sb.files.list("/tmp/tree", depth=3)
    assert {e.path for e in deep} == {"/tmp/tree/a", "/tmp/tree/a/b", "/tmp/tree/a/b/c.txt", "/tmp/tree/top.txt"}
    c = next(e for e in deep if e.name == "c.txt")
    assert c.is_file and c.size == 1
    sb.files.remove("/tmp/tree/top.txt")
    assert not sb.files.exists("/tmp/tree/top.txt")
    sb.files.remove("/tmp/tree", recursive=True)
    assert not sb.files.exists("/tmp/tree")


def test_write_without_mkdir_needs_the_parent(sb: Sandbox) -> None:
    from emberd import EmberdError

    try:
        sb.files.write("/tmp/no-parent-here/x", "x", mkdir=False)
    except EmberdError as e:
        assert e.status in (404, 409)
    else:
        raise AssertionError("a write into a missing directory without mkdir succeeded")


def test_streamed_upload_and_download_of_several_mib(sb: Sandbox, tmp_path: object) -> None:
    size = 6 << 20
    block = os.urandom(1 << 20)
    digest = hashlib.sha256(block * 6).hexdigest()

    def chunks() -> Iterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    w = sb.files.upload("/tmp/big.bin", chunks())
    assert w.bytes == size
    r = sb.exec("import hashlib\nprint(hashlib.sha256(open('/tmp/big.bin','rb').read()).hexdigest())")
    assert r.stdout.strip() == digest
    out = io.BytesIO()
    assert sb.files.download("/tmp/big.bin", out) == size
    assert hashlib.sha256(out.getvalue()).hexdigest() == digest
    assert hashlib.sha256(sb.files.read("/tmp/big.bin")).hexdigest() == digest


def test_tar_round_trip(sb: Sandbox) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, body in (("one.txt", b"1"), ("sub/two.txt", b"22")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    w = sb.files.upload_tar("/tmp/unpacked", buf.getvalue())
    assert w.entries is not None and w.entries >= 2
    assert sb.files.read("/tmp/unpacked/sub/two.txt") == b"22"
    back = io.BytesIO()
    sb.files.download_tar("/tmp/unpacked", back)
    back.seek(0)
    with tarfile.open(fileobj=back) as tar:
        names = {m.name.lstrip("./") for m in tar.getmembers() if m.isfile()}
        assert {"one.txt", "sub/two.txt"} <= {n.split("unpacked/")[-1] for n in names}
