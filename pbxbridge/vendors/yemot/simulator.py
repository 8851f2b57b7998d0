"""A Yemot simulator: the ``responseStatus`` envelope, sessions that expire, and a system that
lives: each tick (``activity_interval`` seconds, or ``POST /_sim/tick``) an SMS arrives, every
queue fills or drains and one of its members is paused or unpaused, a SIP account registers or
unregisters, and an IVR folder gains or loses a file."""

from __future__ import annotations

import hashlib
import itertools
import time
from datetime import datetime
from typing import Any

from aiohttp import web

from pbxbridge.vendors.operation import Operation
from pbxbridge.vendors.sim_audio import synth
from pbxbridge.vendors.simulator import SimError, SimulatorBase, Unauthorized
from pbxbridge.vendors.yemot import operations as ops
from pbxbridge.vendors.yemot.operations import ISRAEL, VENDOR

SYSTEM_NUMBER = "0773137770"
PASSWORD = "sim-yemot-password"

SENDERS = ["972527654321", "972547654321", "972586667788", "972533334444"]
TEXTS = ["שלום, אני רוצה לקבוע תור", "Hello from the simulator", "מה שעות הפתיחה?", "Please call me back"]


class YemotSimulator(SimulatorBase):
    vendor = VENDOR
    base_path = "/ym/api/"

    def __init__(self, *, username: str = SYSTEM_NUMBER, password: str = PASSWORD, **kwargs: Any) -> None:
        self.username, self.password = username, password
        super().__init__(**kwargs)

    def seed_state(self) -> None:
        self.sms: list[dict[str, Any]] = []  # oldest first
        self._sms_seq = itertools.count(1)
        self.queues: dict[str, dict[str, Any]] = {
            "ivr2:/5": {
                "members": {
                    a: {"agent": a, "Status": "1", "CallsTaken": 0, "LastCall": "0", "Paused": False, "Penalty": 0}
                    for a in ("101", "102", "103")
                },
                "entries": {},
            }
        }
        for _ in range(3):
            self.add_sms()
        for _ in range(2):
            self.add_waiting_call("ivr2:/5")
        # IVR folders: path -> {file name: seconds of audio}
        self.folders: dict[str, dict[str, float]] = {"/": {}, "1": {"000.wav": 2.0, "001.wav": 3.0}, "1/100": {}}
        self.pirsum_registered = False
        self.sip_accounts = [
            {"userName": SYSTEM_NUMBER, "createdDate": "2021-06-26 23:00:00", "registered": True},
            {"userName": SYSTEM_NUMBER + "1", "createdDate": "2023-02-01 09:30:00", "registered": False},
        ]
        self.campaigns: list[dict[str, Any]] = []

    # ---- activity -------------------------------------------------------------------

    def add_sms(self, phone: str | None = None, message: str | None = None, when: datetime | None = None) -> dict:
        n = next(self._sms_seq)
        when = when or datetime.now(ISRAEL)
        row = {
            "dest": int("97277" + SYSTEM_NUMBER[3:]),  # Yemot sends these as JSON numbers
            "phone": int(phone or self.random.choice(SENDERS)),
            "message": message or f"{self.random.choice(TEXTS)} #{n}",
            "server_date": when.strftime("%H:%M:%S %Y-%m-%d"),
        }
        self.sms.append(row)
        return row

    def add_waiting_call(self, queue: str) -> str:
        call_id = hashlib.md5(f"{queue}-{self.random.random()}".encode()).hexdigest()
        entries = self.queues[queue]["entries"]
        entries[call_id] = {"phone": self.random.choice(SENDERS), "Wait": 0, "Position": len(entries) + 1, "CallId": call_id}
        return call_id

    def step(self) -> None:
        self.add_sms()
        for path, queue in self.queues.items():
            for entry in queue["entries"].values():
                entry["Wait"] += int(self.activity_interval)
            self._queue_moves(path, queue)
            member = self.random.choice(list(queue["members"].values()))
            member["Paused"] = not member["Paused"]
        account = self.random.choice(self.sip_accounts)
        account["registered"] = not account["registered"]
        self._folder_moves()

    def _queue_moves(self, path: str, queue: dict[str, Any]) -> None:
        """Members on a call hang up; then a caller arrives or, when there are callers and a free
        member, the longest waiting one is answered: the waiting list changes every tick."""
        members = queue["members"].values()
        for member in members:
            if member["Status"] == "2" and self.random.random() < 0.5:
                member["Status"] = "1"
        free = [m for m in members if m["Status"] == "1" and not m["Paused"]]
        if queue["entries"] and free and (len(queue["entries"]) >= 4 or self.random.random() < 0.5):
            self.answer(path, self.random.choice(free)["agent"])
        elif len(queue["entries"]) >= 8:  # nobody free for long: the longest waiting caller hangs up
            self._leave(queue, min(queue["entries"], key=lambda c: queue["entries"][c]["Position"]))
        else:
            self.add_waiting_call(path)

    def answer(self, queue: str, agent: str) -> str:
        """``agent`` takes the caller at the head of ``queue``; returns the call's id."""
        q = self.queues[queue]
        call_id = min(q["entries"], key=lambda c: q["entries"][c]["Position"])
        self._leave(q, call_id)
        member = q["members"][agent]
        member.update(Status="2", CallsTaken=member["CallsTaken"] + 1, LastCall=str(int(time.time())))
        return call_id

    @staticmethod
    def _leave(queue: dict[str, Any], call_id: str) -> None:
        """A caller leaves the queue; the ones behind move up."""
        del queue["entries"][call_id]
        for position, entry in enumerate(sorted(queue["entries"].values(), key=lambda e: e["Position"]), 1):
            entry["Position"] = position

    def _folder_moves(self) -> None:
        """A recording lands in a folder under the next number, or the oldest one is deleted."""
        folder = self.random.choice(sorted(self.folders))
        files = self.folders[folder]
        if files and (len(files) >= 5 or self.random.random() < 0.4):
            del files[min(files)]
        else:
            self.add_file(folder)

    def add_file(self, folder: str, seconds: float = 2.0) -> str:
        """A new audio file in ``folder``, numbered after the highest (as Yemot numbers recordings)."""
        numbers = [int(n.split(".")[0]) for n in self.folders[folder] if n.split(".")[0].isdigit()]
        name = f"{max(numbers, default=-1) + 1:03d}.wav"
        self.folders[folder][name] = seconds
        return name

    def state(self) -> dict[str, Any]:
        return {"sms": self.sms, "queues": self.queues, "folders": self.folders, "sip_accounts": self.sip_accounts,
                "campaigns": self.campaigns, "pirsum_registered": self.pirsum_registered}

    # ---- envelope and auth ----------------------------------------------------------

    def reply(self, op: Operation, payload: Any) -> web.StreamResponse:
        if isinstance(payload, (bytes, web.StreamResponse)):
            return super().reply(op, payload)
        return web.json_response({"responseStatus": "OK", "yemotAPIVersion": 5, **(payload or {})})

    def error_reply(self, op: Operation | None, error: SimError) -> web.StreamResponse:
        if isinstance(error, Unauthorized):
            if error.message == "expired":
                return web.json_response(
                    {"responseStatus": "EXCEPTION", "message": "IllegalStateException(session token is invalid)"}
                )
            return web.json_response({"responseStatus": "FORBIDDEN", "message": error.message})
        return web.json_response({"responseStatus": "ERROR", "messageCode": error.code or 100, "message": error.message})

    def authenticate(self, op: Operation, request: web.Request, params: dict[str, Any]) -> None:
        if op.name == "Login":
            return
        token = params.pop("token", None)
        if token == f"{self.username}:{self.password}":
            return
        if not token:
            raise Unauthorized("token is missing")
        if not self.token_valid(token):
            raise Unauthorized("expired")

    def account_credentials(self) -> tuple[str | None, dict[str, str]]:
        return self.username, {"password": self.password}

    def account(self, account_id: str = "sim", **options: Any):
        """As the base, watching this simulator's queues and folders unless told otherwise."""
        options = {"queues": sorted(self.queues), "folders": sorted(self.folders), **options}
        return super().account(account_id, **options)

    # ---- operations -----------------------------------------------------------------

    def Login(self, req: ops.LoginRequest) -> dict:
        if req.username != self.username or req.password.get_secret_value() != self.password:
            raise Unauthorized("wrong username or password")
        return {"token": self.issue_token()}

    def GetSmsIncomingLog(self, req: ops.SmsLogRequest) -> dict:
        rows = list(reversed(self.sms))  # latest first, like the real log
        if req.startDate:
            rows = [r for r in rows if _date_of(r) >= req.startDate]
        if req.endDate:
            rows = [r for r in rows if _date_of(r) <= req.endDate]
        return {"rows": rows[: req.limit] if req.limit else rows}

    def _queue(self, path: str) -> dict[str, Any]:
        if path not in self.queues:
            raise SimError(f"queue {path} not found", code="QUEUE_NOT_FOUND")
        return self.queues[path]

    def QueueManagement(self, req: ops.QueueKick | ops.QueuePause | ops.QueueUnpause) -> dict:
        queue = self._queue(req.queuePath)
        if isinstance(req, ops.QueueKick):
            status = {}
            for call_id in req.callIds:
                status[call_id] = "OK" if queue["entries"].pop(call_id, None) else "Call not found"
            return {"yAfastVersion": "6.6.20", "status": status}
        member = queue["members"].get(req.agent)
        if member is None:
            raise SimError(f"agent {req.agent} not in queue", code="AGENT_NOT_FOUND")
        member["Paused"] = req.action == "pause"
        return {}

    def GetQueueRealTime(self, req: ops.QueueRealTimeRequest) -> dict:
        queue = self._queue(req.queuePath)
        return {
            "queueData": {"name": req.queuePath, "waiting": len(queue["entries"])},
            "members": list(queue["members"].values()),
            "entries": list(queue["entries"].values()),
        }


    # ---- IVR folders, services, SIP ---------------------------------------------------

    @staticmethod
    def _folder_key(path: str) -> str:
        key = path.removeprefix("ivr2:").removeprefix("ivr:").strip("/").removeprefix("ext/")
        return key or "/"

    def _file_info(self, folder: str, name: str) -> dict[str, Any]:
        seconds = self.folders[folder][name]
        return {"exists": True, "name": name, "uniqueId": hashlib.md5(f"{folder}/{name}".encode()).hexdigest(),
                "what": f"ivr2:/{folder.strip('/')}/{name}".replace(":///", ":/"), "fileType": "AUDIO",
                "size": len(synth(seconds, "wav")), "mtime": "2026-11-20 10:00:00", "duration": round(seconds / 60, 3),
                "durationStr": f"{int(seconds) // 60:02d}:{int(seconds) % 60:02d}", "customerDid": SYSTEM_NUMBER,
                "date": "20/11/2026 10:00", "source": "upload", "phone": None}

    def GetIVR2DirStats(self, req: ops.DirStatsRequest) -> dict:
        key = self._folder_key(req.path)
        if key not in self.folders:
            raise SimError(f"path {req.path} not found", code="PATH_NOT_FOUND")
        files = sorted(self.folders[key])
        subfolders = [k for k in self.folders if k != key and k.rsplit("/", 1)[0] == key.strip("/") and "/" in k]
        if key == "/":
            subfolders = [k for k in self.folders if k != "/" and "/" not in k]
        parent = key.rsplit("/", 1)[0] if "/" in key.strip("/") else "/"
        return {"type": "menu", "thisPath": key, "parentPath": None if key == "/" else parent,
                "dirsCount": len(subfolders), "filesCount": len(files), "contentFilesCount": len(files),
                "minFile": self._file_info(key, files[0]) if files else {"exists": False},
                "maxFile": self._file_info(key, files[-1]) if files else {"exists": False}}

    def DownloadFile(self, req: ops.DownloadRequest) -> bytes:
        folder, _, name = self._folder_key(req.path).rpartition("/")
        folder = folder or "/"
        if name not in self.folders.get(folder, {}):
            raise SimError(f"file {req.path} not found", code="FILE_NOT_FOUND")
        return synth(self.folders[folder][name], "wav", pitch=400 + 40 * len(name))

    def PirsumPhoneManagement(self, req: ops.PirsumRequest) -> dict:
        if req.action == "GetRegistrationStatus":
            return {"registrationStatus": self.pirsum_registered}
        self.pirsum_registered = req.action == "Registration"
        return {"results": "OK"}

    def _campaign(self, phones: Any, caller_id: str | None, timeout: int | None, module: str) -> dict:
        numbers: list[str] = []
        if isinstance(phones, str):
            numbers = [p for p in phones.replace(",", ":").split(":") if p]
        else:
            for item in phones:
                numbers += [item] if isinstance(item, str) else getattr(item, "phones", None) or [item.phone]
        if len(numbers) > 500:
            raise SimError("up to 500 numbers per campaign", code="TOO_MANY_PHONES")
        errors = {n: "not Vaild" for n in numbers if not (n.isdigit() and 9 <= len(n) <= 12)}  # sic, as Yemot
        campaign = {"module": module, "callerId": caller_id or SYSTEM_NUMBER, "callsCount": len(numbers) - len(errors),
                    "bilingPerCall": 1, "errors": errors, "callsTimeout": timeout or 30,
                    "campaignId": f"YA-1-{SYSTEM_NUMBER}-Yemot-{next(self._sms_seq)}"}
        self.campaigns.append(campaign)
        return campaign

    def CallExtensionBridging(self, req: ops.BridgingRequest) -> dict:
        if self._folder_key(req.ivrPath) not in self.folders:
            raise SimError(f"ivrPath {req.ivrPath} not found", code="PATH_NOT_FOUND")
        return self._campaign(req.phones, req.callerId, req.callsTimeOut, "menu")

    def RunTzintuk(self, req: ops.TzintukRequest) -> dict:
        return self._campaign(req.phones, req.callerId, req.TzintukTimeOut, "tzintuk")

    def SipGetContexts(self, req: ops.SipContextsRequest) -> dict:
        number = req.accountNumber or self.sip_accounts[0]["userName"]
        account = next((a for a in self.sip_accounts if a["userName"] == number), None)
        if account is None:
            raise SimError(f"SIP account {number} not found", code="SIP_NOT_FOUND")
        if not account["registered"]:
            return {"contexts": []}
        # The document's example registration.
        return {"contexts": [{"expiration_time": "2024-06-04 15:43:38", "uri": f"sip:{number}@192.168.1.99:5060",
                              "user_agent": "Yealink SIP-T29G", "via_addr": "192.168.1.110", "via_port": "5060"}]}

    def GetSipAccountsRegisteredStatus(self, req: ops.NoParams) -> dict:
        return {"accounts": self.sip_accounts}

def _date_of(row: dict) -> str:
    return row["server_date"].split(" ")[1]
