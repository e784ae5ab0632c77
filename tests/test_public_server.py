"""Public mode and login against a real server, with several clients: one that reconnects (a new session,
and a forged X-Forwarded-For entry), one that copies another's session hash, and one from elsewhere.

Clients connect over loopback; ``GPTAILOR_PROXY_HOPS=1`` makes the app read each one's address from the
X-Forwarded-For entry a proxy would append, which each client here sets as that proxy would."""
import ctypes
import json
import os
import re
import struct
import threading
import zipfile
from pathlib import Path

import pytest

from test_app import free_port, start_app, stop_app

A, B, D = "203.0.113.5", "198.51.100.7", "192.0.2.1"  # three visitors' addresses as the proxy sees them
E, F = "203.0.113.77", "198.51.100.88"  # two visitors who export
FORM = ("demo", "random", 2, 1, None, 0, 4, 8)  # family, method, remove, trials, wall time, seed, fidelities
EXPORT_MB = 4  # the demo's checkpoint zips to about 2.5 MB: one fits under the cap, two do not


@pytest.fixture(scope="module")
def spaces(tmp_path_factory):
    proc, url, data = start_app(tmp_path_factory, GPTAILOR_PUBLIC="1", GPTAILOR_PROXY_HOPS="1",
                                GPTAILOR_CLIENT_MAX_STUDIES="2", GPTAILOR_MAX_STUDIES_PER_HOUR="3",
                                GPTAILOR_MAX_WORKERS="1", GPTAILOR_MAX_TRIALS="2",
                                GPTAILOR_MAX_EXPORT_MB=str(EXPORT_MB))
    yield url, data
    stop_app(proc)


def visitor(url: str, forwarded: str):
    from gradio_client import Client

    return Client(url, verbose=False, headers={"X-Forwarded-For": forwarded})


def launch(client, name: str, token):
    return client.predict(*FORM, name, "layers to remove", 0.8, None, token, api_name="/launch_study")


def test_caps_and_ownership_hold_whatever_session_a_client_uses(spaces):
    from db.store import ACTIVE, Store

    url, data = spaces
    a = visitor(url, A)
    token_a = a.predict(None, api_name="/owner_token")
    _m, _r, s1 = launch(a, "a-1", token_a)
    msg, _r, s2 = launch(a, "a-2", token_a)
    assert "queued (#1 in line)" in msg  # the global worker cap: one at a time, whoever asks

    # a reconnect: a new session and a new token, and a forged entry left of the proxy's one
    again = visitor(url, f"1.1.1.1, {A}")
    assert again.session_hash != a.session_hash
    token_new = again.predict(None, api_name="/owner_token")
    assert token_new != token_a
    with pytest.raises(Exception, match="this address already made 2 studies in the last 24 hours"):
        launch(again, "a-3", token_new)
    with pytest.raises(Exception, match=f"study {int(s1)} was started by another visitor"):
        again.predict(int(s1), "reconnected", token_new, api_name="/rename_study")
    # a reload of the same browser keeps its token (localStorage), and with it the studies
    note, _p, _q = again.predict(int(s1), "a-first", token_a, api_name="/rename_study")
    assert f"study {int(s1)} is now named **a-first**" in note

    # a client elsewhere that copies the owner's session hash gains nothing from it
    copier = visitor(url, B)
    copier.session_hash = a.session_hash
    token_c = copier.predict(None, api_name="/owner_token")
    assert token_c not in (token_a, token_new)
    nonce, _sig = token_a.split(".")
    for token in (None, token_c, f"{nonce}.forged", "made-up"):
        with pytest.raises(Exception, match="started by another visitor"):
            copier.predict(int(s2), token, api_name="/cancel_study")
        with pytest.raises(Exception, match="started by another visitor"):
            copier.predict(int(s2), "renamed", token, api_name="/rename_study")
    with pytest.raises(Exception, match="holds no owner token from this app"):
        launch(copier, "c-0", f"{nonce}.forged")
    _m, _r, s3 = launch(copier, "c-1", token_c)  # its own address has its own allowance

    # the app's hourly cap (3) holds for everyone, whatever their address
    with pytest.raises(Exception, match="this app already started 3 studies in the last hour"):
        launch(visitor(url, D), "d-1", visitor(url, D).predict(None, api_name="/owner_token"))

    st = Store(f"sqlite:///{data / 'gptailor.db'}")
    studies = {s["id"]: s for s in st.studies()}
    assert sorted(studies) == sorted(int(s) for s in (s1, s2, s3)) and studies[int(s1)]["name"] == "a-first"
    assert sum(s["status"] in ACTIVE for s in studies.values()) <= 1  # never two workers at once
    assert len({studies[int(s)]["client_key"] for s in (s1, s2)}) == 1 != len({studies[int(s1)]["client_key"],
                                                                                studies[int(s3)]["client_key"]})
    note, _rows = a.predict(int(s2), token_a, api_name="/cancel_study")  # its owner may
    assert f"Study {int(s2)}: cancelled" in note
    # a cancelled study is resumable, but only by its owner: the copier's and forged tokens change nothing
    before = {k: v for k, v in st.study(int(s2)).items() if k != "trials"}
    assert before["status"] == "cancelled"
    for client, token in ((copier, None), (copier, token_c), (copier, f"{nonce}.forged"), (again, token_new)):
        with pytest.raises(Exception, match=f"study {int(s2)} was started by another visitor; you can resume"):
            client.predict(int(s2), token, api_name="/resume_study")
    assert {k: v for k, v in st.study(int(s2)).items() if k != "trials"} == before
    for client, token, sid in ((a, token_a, s1), (copier, token_c, s3)):  # leave no worker running
        try:
            client.predict(int(sid), token, api_name="/cancel_study")
        except Exception as e:  # it may have finished its one trial already
            assert "nothing to cancel" in str(e)


# -- export bytes: a global cap ----------------------------------------------------------------------------
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE, IN_ISDIR = 0x40, 0x80, 0x100, 0x200, 0x40000000


def watch(folder: Path) -> int:
    """An inotify descriptor on ``folder``: the kernel queues, in order, every entry created or deleted in it
    (read afterwards, so the test needs neither polling nor timing)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK)
    if fd < 0 or libc.inotify_add_watch(fd, str(folder).encode(),
                                        IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO) < 0:
        raise OSError(ctypes.get_errno(), "inotify")
    return fd


def events(fd: int) -> list[tuple[str, str]]:
    """The queued events as ("+" or "-", name, with "/" after a folder's name), oldest first."""
    data = b""
    while True:
        try:
            data += os.read(fd, 1 << 16)
        except BlockingIOError:
            break
    out, at = [], 0
    while at < len(data):
        _wd, mask, _cookie, size = struct.unpack_from("iIII", data, at)
        name = data[at + 16:at + 16 + size].rstrip(b"\0").decode()
        at += 16 + size
        sign = "+" if mask & (IN_CREATE | IN_MOVED_TO) else "-"
        out.append((sign, name + ("/" if mask & IN_ISDIR else "")))
    return out


def test_two_exports_at_once_run_one_after_the_other_and_the_disk_keeps_the_cap(spaces):
    """Two visitors (two addresses, so no per-client lock orders them) export at the same moment: each gets
    its whole checkpoint, but the exports write one at a time (no second export folder appears before the
    first is zipped and gone), and afterwards the exports folder holds only the newer zip, under the cap."""
    from gradio_client import Client

    url, data = spaces
    folder = data / "exports"
    folder.mkdir(exist_ok=True)
    fd = watch(folder)
    plan = Client(url, verbose=False).predict("demo", api_name="/identity_plan")
    plans = {E: plan.replace("2:base", "2:drop"), F: plan.replace("4:base", "4:drop").replace("5:base", "5:drop")}
    kept = {E: 7, F: 6}  # of the demo's 8 layers: tells the two checkpoints apart
    clients = {who: visitor(url, who) for who in plans}
    barrier, got, failed = threading.Barrier(len(plans)), {}, []

    def export(who: str) -> None:
        barrier.wait()
        try:
            got[who] = clients[who].predict("demo", plans[who], api_name="/export")
        except Exception as e:  # reported below, with the events seen
            failed.append(f"{who}: {e}")

    threads = [threading.Thread(target=export, args=(who,)) for who in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen = events(fd)
    os.close(fd)
    assert not failed, (failed, seen)

    names = {who: re.fullmatch(r"Exported (\S+\.zip)", note).group(1) for who, (_path, note) in got.items()}
    for who, (path, _note) in got.items():  # each visitor got its own whole checkpoint
        with zipfile.ZipFile(path) as z:
            assert z.testzip() is None and "model.safetensors" in z.namelist()
            assert json.loads(z.read("config.json"))["num_hidden_layers"] == kept[who]
    sizes = [Path(path).stat().st_size for path, _note in got.values()]
    assert max(sizes) <= EXPORT_MB * 1e6 < sum(sizes)  # the premise: one fits under the cap, both do not
    # one at a time: each export's folder appears, is zipped and goes before the other's folder appears
    folders = [(sign, name) for sign, name in seen if name.endswith("/")]
    assert len(folders) == 4 and [sign for sign, _n in folders] == ["+", "-", "+", "-"], seen
    assert folders[0][1] == folders[1][1] != folders[2][1] == folders[3][1]
    first, second = (name.rstrip("/") + ".zip" for _s, name in folders[::2])
    assert sorted((first, second)) == sorted(names.values())
    assert seen.index(("+", first)) < seen.index(folders[1]) and seen.index(("-", first)) > seen.index(folders[3])
    # afterwards: the newer zip alone, whole, within the cap; no folder left
    left = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    assert left == [second]
    assert sum(p.stat().st_size for p in folder.rglob("*")) <= EXPORT_MB * 1e6
    who_second = next(who for who, name in names.items() if name == second)
    assert (folder / second).read_bytes() == Path(got[who_second][0]).read_bytes()


def routes(found):
    """Every route of the app, the ones of included routers (Gradio's /gradio_api) too."""
    for route in found:
        if hasattr(route, "original_router"):
            yield from routes(route.original_router.routes)
        else:
            yield route


def test_with_login_every_endpoint_but_the_login_forms_asks_for_it(tmp_path, monkeypatch):
    """Every route of the real app, called without the login cookie, answers 401, except the short list the
    login form needs (ui/login.py); logged in, the session endpoints Gradio left open answer again."""
    import httpx
    from gradio_client import Client

    from ui.app import build_app, launch_options
    from ui.guard import valid_token
    from ui.login import is_open

    monkeypatch.setenv("GPTAILOR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GPTAILOR_AUTH", "op:secret")
    port = free_port()
    demo = build_app().queue()
    demo.launch(server_port=port, prevent_thread_lock=True, **launch_options())
    url = f"http://127.0.0.1:{port}"
    try:
        checked, open_paths = [], set()
        with httpx.Client(base_url=url, timeout=60) as anon:  # a hang guard only: a refusal is immediate
            for route in routes(demo.app.routes):
                path = re.sub(r"\{[^}]*\}", "x", getattr(route, "path", ""))
                if not path or not getattr(route, "methods", None):
                    continue
                if is_open(path):
                    open_paths.add(path)
                    continue
                for method in sorted(route.methods - {"HEAD", "OPTIONS"}):
                    r = anon.request(method, path, json={})
                    checked.append((method, path, r.status_code))
        assert len(checked) > 50 and [c for c in checked if c[2] != 401] == []
        for must in ("/gradio_api/reset", "/gradio_api/cancel", "/gradio_api/heartbeat/x", "/gradio_api/stream/x",
                     "/gradio_api/queue/join", "/gradio_api/upload", "/config"):
            assert any(p == must for _m, p, _s in checked), must
        assert open_paths <= {"/", "/login", "/login/", "/logout", "/logout/", "/favicon.ico", "/manifest.json",
                              "/robots.txt", "/theme.css", "/gradio_api/theme.css", "/gradio_api/login_check",
                              "/gradio_api/login_check/", "/gradio_api/user", "/gradio_api/user/", "/gradio_api/token",
                              "/gradio_api/token/", "/gradio_api/app_id", "/gradio_api/app_id/",
                              "/gradio_api/startup-events"} | {p for p in open_paths if p.startswith(
                                  ("/assets/", "/static/", "/svelte/", "/pwa_icon"))}
        with httpx.Client(base_url=url, timeout=60) as user:
            assert user.post("/login", data={"username": "op", "password": "wrong"}).status_code == 400
            assert user.post("/gradio_api/reset", json={"event_id": "x"}).status_code == 401
            assert user.post("/login", data={"username": "op", "password": "secret"}).status_code == 200
            assert user.post("/gradio_api/reset", json={"event_id": "x"}).status_code == 200
            with user.stream("GET", "/gradio_api/heartbeat/some-session") as beat:
                assert beat.status_code == 200
        assert valid_token(Client(url + "/", auth=("op", "secret"), verbose=False).predict(None, api_name="/owner_token"))
    finally:
        demo.close()
