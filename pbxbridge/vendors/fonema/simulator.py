"""A Fonema simulator: users, ReachMe, numbers, presence, calls with recordings (real FLAC),
voicemail, ring groups and their settings, sounds; sessions by bearer token.

It lives: every activity tick (``activity_interval``, or ``POST /_sim/tick`` on demand) the
session user's call starts or ends (an ended call joins the history, in one of the documented
outcomes, recorded or not), their presence changes, and now and then a voicemail arrives."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from typing import Any

from aiohttp import web

from pbxbridge.vendors.fonema import operations as ops
from pbxbridge.vendors.fonema.operations import MADRID, TOKEN_PARAMETER, VENDOR
from pbxbridge.vendors.operation import Operation
from pbxbridge.vendors.sim_audio import synth
from pbxbridge.vendors.simulator import SimError, SimulatorBase, Unauthorized

LOGIN = "admin@fonema.sim"
PASSWORD = "sim-fonema-password"
OK: dict[str, Any] = {"code": 200}
CALLERS = ["34612345678", "34699887766", "34911223344", "34655443322"]
OUTCOMES = ["answer", "answer", "answer", "noanswer", "busy", "cancel", "not-available"]  # Disposition words, weighted
SESSION_USER = 1  # the user the account logs in as: getNotifications and isOnCall answer for them
VOICEMAIL_PAGE = 50  # getVoiceMailMessages' page size (filasPorPagina)


class FonemaSimulator(SimulatorBase):
    vendor = VENDOR
    base_path = "/api/"

    def __init__(self, *, login: str = LOGIN, password: str = PASSWORD, **kwargs: Any) -> None:
        self.login_name, self.password = login, password
        super().__init__(**kwargs)

    # ---- state ------------------------------------------------------------------------

    def seed_state(self) -> None:
        self._ids = itertools.count(100)
        self.users: dict[int, dict[str, Any]] = {}
        for uid, (first, ext) in enumerate([("Ana", "101"), ("Luis", "102"), ("Marta", "103")], start=1):
            self.users[uid] = {
                "id": uid, "firstName": first, "lastName": "Sim", "name": f"{first} Sim", "email": f"{first.lower()}@example.com",
                "login": f"{first.lower()}@fonema.sim", "extNumber": ext, "isAdmin": uid == 1, "lang": "es_ES",
                "timeZone": "Europe/Madrid", "hasDefaultBond": False, "enabled": True, "dominio": "sim.fonema",
                "defaultCallerId": "34910000001", "mobileType": "none", "callbackDirect": False, "mobileNumber": None,
                "reachMeMode": "ringall", "recordOutgoing": False, "voiceMail": True, "voiceMailPin": "1234",
            }
        self.users[SESSION_USER]["login"] = self.login_name
        self.passwords = {uid: "initial" for uid in self.users}
        self.reach_me = {1: [
            {"id": 1, "enabled": True, "priority": 1, "timeToRing": 20, "type": "sip", "value": None},
            {"id": 2, "enabled": True, "priority": 2, "timeToRing": 20, "type": "mobile", "value": "34612345678"},
        ], 2: [], 3: []}
        self.dids = {
            1: {"id": 1, "number": "34910000001", "type": "general", "user": "General", "description": "Madrid",
                "created": "2024-01-10", "monthlyCost": 1.5},
            2: {"id": 2, "number": "34910000002", "type": "general", "user": "General", "description": "Madrid",
                "created": "2024-03-02", "monthlyCost": 1.5},
        }
        self.countries = [
            {"countryCodeA3": "ESP", "countryName": "España", "phoneCode": "34", "hasStates": 0, "hasRegulationRequirement": 1},
            {"countryCodeA3": "USA", "countryName": "United States", "phoneCode": "1", "hasStates": 1, "hasRegulationRequirement": 0},
        ]
        self.states = {"USA": [{"stateId": 5, "stateName": "New York", "stateCode": "NY", "countryCodeA3": "USA"}]}
        self.did_groups = [
            {"didGroupId": 9100, "cityName": "Madrid", "stock": 25, "countryCodeA3": "ESP", "areaCode": "91",
             "setup100": 0, "monthly100": 150, "addressType": "NATIONAL", "proofRequired": False, "available": True,
             "description": "Madrid (91)", "type": "GEOGRAPHIC"},
            {"didGroupId": 9300, "cityName": "Barcelona", "stock": 0, "countryCodeA3": "ESP", "areaCode": "93",
             "setup100": 0, "monthly100": 150, "available": False, "description": "Barcelona (93)", "type": "GEOGRAPHIC"},
        ]
        self.presence = {uid: "online" for uid in self.users}
        self.live_calls: dict[str, dict[str, Any]] = {
            "live-1": {"user": 1, "with": "34612345678", "transfer": None},
            "live-2": {"user": 2, "with": "34699887766", "transfer": "103"},  # a transfer in progress
        }
        self.calls: list[dict[str, Any]] = []
        self.recordings: dict[str, float] = {}  # call id -> seconds of audio
        self.voicemail = {
            "vm-1": {"id": "vm-1", "callerid": "Cliente <34612345678>", "date": 1763800000, "tags": [], "folder": "inbox", "box": ""},
            "vm-2": {"id": "vm-2", "callerid": "Proveedor <34699887766>", "date": 1763803600, "tags": [], "folder": "inbox", "box": ""},
        }
        self.groups: dict[int, dict[str, Any]] = {}
        for gid, name in ((10, "Ventas"), (11, "Soporte")):
            self.groups[gid] = {
                "Id": gid, "Name": name, "Announce": "espera.wav", "AnnounceTime": 30, "Dids": ["34910000001"],
                "GroupOutgoingType": "called-did", "GroupOutgoingCallerId": None, "LocutionEnabled": False,
                "LocutionId": None, "Members": [{"id": 1, "type": "user"}], "MissedCallsEmail": None,
                "Policy": "ringall", "Priority": "medium", "PublicNumberTone": "moh", "RecordIncoming": True,
                "Tag": name.lower(), "TimeZone": "Europe/Madrid", "Timeout": 60,
                "voiceMail": {"Id": f"vm{gid}", "Enabled": False, "Email": None, "Users": []},
                "music": "default.wav", "locutions": {}, "missedCalls": None,
            }
        self.schedules = {
            1: {"Id": 1, "Enabled": True, "KenkeniRginGroupsId": 10, "Logic": "positive", "Date": None, "HourRange": "09:00-18:00",
                "Perodicy": {"type": "weekly", "days": "Mon,Tue,Wed,Thu,Fri"}, "Section": "schedules", "Name": "Laborables"},
            2: {"Id": 2, "Enabled": True, "KenkeniRginGroupsId": 10, "Logic": "negative", "Date": "2026-01-01 00:00:00",
                "HourRange": None, "Perodicy": {"type": "yearly"}, "Section": "closed", "Name": "Año nuevo"},
        }
        self.musics = ["default.wav", "jazz.wav", "classic.wav"]
        self.sounds = [{"mCategory": "general", "mPath": "bienvenida.wav"}, {"mCategory": "general", "mPath": "espera.wav"}]
        self.voices = {"es_ES": [{"Id": "es-lucia", "Description": "Lucía"}], "en_US": [{"Id": "en-joanna", "Description": "Joanna"}]}
        for _ in range(3):
            self.add_finished_call()

    def add_finished_call(self, recorded: bool = True, seconds: float = 3.0, *, disposition: str = "answer",
                          when: datetime | None = None) -> str:
        """A call that just ended (or started at ``when``, Spain local), in the log; with a
        recording (real FLAC) when ``recorded``."""
        call_id = str(1000 + len(self.calls) + 1)
        when = when or datetime.now(MADRID) - timedelta(seconds=seconds)
        caller = self.random.choice(CALLERS)
        self.calls.append({
            "Id": call_id, "Cost": 0.0, "Callerid": caller, "Callid": f"{call_id}@sim.fonema", "Date": when.strftime("%Y-%m-%d %H:%M:%S"),
            "Direction": "Incoming", "Disposition": disposition, "Src": caller, "Dst": "34910000001", "Duration": int(seconds),
            "Recorded": 1 if recorded else 0, "Searchable": "sim|entrante", "Transcription": None, "WhoHanged": "caller",
            "callerIdSrc": caller, "callerIdDst": "Ventas", "ringGroup": "Ventas",
            "subCalls": [
                {"Id": f"{call_id}-1", "Cost": 0.0, "Called": "101", "CalledType": "sip", "Date": when.strftime("%Y-%m-%d %H:%M:%S"),
                 "Direction": "incoming", "Disposition": disposition, "Duration": int(seconds), "KenkeniSrcUsersId": None,
                 "KenkeniDstUsersId": "1", "Transfered": None},
            ],
        })
        if recorded:
            self.recordings[call_id] = seconds
        return call_id

    def add_voicemail(self, caller: str | None = None, when: datetime | None = None, folder: str = "inbox") -> str:
        """A message left in the session user's own mailbox (``general=0``)."""
        mid = f"vm-{next(self._ids)}"
        number = caller or self.random.choice(CALLERS)
        stamp = int((when or datetime.now(timezone.utc)).timestamp())
        self.voicemail[mid] = {"id": mid, "callerid": f"Cliente <{number}>", "date": stamp, "tags": [], "folder": folder, "box": ""}
        return mid

    def session_call(self) -> str | None:
        """The session user's call in progress (what ``isOnCall`` answers), if any."""
        return next((k for k, c in self.live_calls.items() if c["user"] == SESSION_USER), None)

    def start_session_call(self, number: str | None = None) -> str:
        uuid = f"live-{next(self._ids)}"
        self.live_calls[uuid] = {"user": SESSION_USER, "with": number or self.random.choice(CALLERS), "transfer": None}
        return uuid

    def end_session_call(self) -> str | None:
        """Hang up the session user's call; it joins the history."""
        uuid = self.session_call()
        if uuid is not None:
            del self.live_calls[uuid]
            outcome = self.random.choice(OUTCOMES)
            recorded = outcome == "answer" and self.random.random() < 0.7
            self.add_finished_call(recorded=recorded, seconds=float(self.random.randint(2, 5)), disposition=outcome)
        return uuid

    def step(self) -> None:
        """One round of activity: the session user's call starts or ends (ending, it joins the
        history), their presence changes, and now and then someone leaves a voicemail."""
        if self.end_session_call() is None:
            self.start_session_call()
        words = [w for w in ("online", "away", "dnd", "offline") if w != self.presence[SESSION_USER]]
        self.presence[SESSION_USER] = self.random.choice(words)
        if self.random.random() < 0.4:
            self.add_voicemail()

    def state(self) -> dict[str, Any]:
        return {"users": self.users, "presence": self.presence, "calls": self.calls[-20:], "groups": self.groups,
                "dids": self.dids, "live_calls": self.live_calls,
                "voicemail": self.voicemail}

    # ---- envelope and auth ------------------------------------------------------------

    def reply(self, op: Operation, payload: Any) -> web.StreamResponse:
        if isinstance(payload, (bytes, web.StreamResponse)):
            return super().reply(op, payload)
        return super().reply(op, {"code": 200, "response": payload})

    def error_reply(self, op: Operation | None, error: SimError) -> web.StreamResponse:
        status = 401 if isinstance(error, Unauthorized) else 500
        return web.json_response({"code": status if error.code is None else error.code, "error": error.message}, status=status)

    def authenticate(self, op: Operation, request: web.Request, params: dict[str, Any]) -> None:
        if op.name == "login":
            return
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else None
        if op.name in TOKEN_PARAMETER and params.pop("token", None) != token:
            raise Unauthorized("token parameter does not match the session")
        if not self.token_valid(token):
            raise Unauthorized("invalid or expired token")

    def account_credentials(self) -> tuple[str | None, dict[str, str]]:
        return self.login_name, {"password": self.password}

    # ---- helpers ----------------------------------------------------------------------

    def _user(self, uid: int) -> dict[str, Any]:
        if uid not in self.users:
            raise SimError(f"user {uid} not found", code=404)
        return self.users[uid]

    def _group(self, gid: int) -> dict[str, Any]:
        if gid not in self.groups:
            raise SimError(f"group {gid} not found", code=404)
        return self.groups[gid]

    def _schedule(self, sid: int) -> dict[str, Any]:
        if sid not in self.schedules:
            raise SimError(f"schedule {sid} not found", code=404)
        return self.schedules[sid]

    def _live(self, uuid: str) -> dict[str, Any]:
        if uuid not in self.live_calls:
            raise SimError(f"call {uuid} not found", code=404)
        return self.live_calls[uuid]

    def _voicemail(self, mid: str) -> dict[str, Any]:
        if mid not in self.voicemail:
            raise SimError(f"message {mid} not found", code=404)
        return self.voicemail[mid]

    @staticmethod
    def _fields(req: Any, *, exclude: set[str] = frozenset()) -> dict[str, Any]:
        return {k: v for k, v in req.model_dump(exclude_none=True).items() if k not in exclude}

    # ---- operations: session and users ------------------------------------------------

    def login(self, req: ops.LoginRequest) -> dict:
        if req.login != self.login_name or req.password.get_secret_value() != self.password:
            raise Unauthorized("wrong login or password")
        return {"token": self.issue_token()}

    def getUsers(self, req: ops.NoParams) -> list:
        return [{k: u[k] for k in ops.User.model_fields if k in u} for u in self.users.values()]

    def getUser(self, req: ops.UserId) -> dict:
        return self._user(req.userId)

    def addUser(self, req: ops.AddUser) -> dict:
        if any(u["extNumber"] == req.extNumber for u in self.users.values()):
            raise SimError(f"extension {req.extNumber} already exists", code=409)
        uid = next(self._ids)
        fields = self._fields(req, exclude={"password", "verificationCode"})
        self.users[uid] = {**self.users[1], "isAdmin": False, **fields, "id": uid,
                           "name": f"{req.firstName} {req.lastName or ''}".strip(), "login": req.email}
        self.passwords[uid] = req.password.get_secret_value()
        self.reach_me[uid], self.presence[uid] = [], "offline"
        return {"code": 200, "id": uid}

    def editUser(self, req: ops.EditUser) -> dict:
        self._user(req.userId).update(self._fields(req, exclude={"userId", "verificationCode"}))
        return OK

    def removeUser(self, req: ops.UserId) -> dict:
        self._user(req.userId)
        del self.users[req.userId]
        return OK

    def setUserStatus(self, req: ops.SetUserStatus) -> dict:
        self._user(req.userId)["enabled"] = req.enabled
        if not req.enabled:  # the document: disabling ends the user's calls
            self.live_calls = {k: c for k, c in self.live_calls.items() if c["user"] != req.userId}
        return OK

    def setAdmin(self, req: ops.SetAdmin) -> dict:
        self._user(req.userId)["isAdmin"] = req.isAdmin
        return OK

    def changePassword(self, req: ops.ChangePassword) -> dict:
        self._user(req.userId)
        self.passwords[req.userId] = req.newPassword.get_secret_value()
        return OK

    # ---- find me ----------------------------------------------------------------------

    def _reach(self, uid: int) -> list[dict[str, Any]]:
        self._user(uid)
        return self.reach_me.setdefault(uid, [])

    def getReachMe(self, req: ops.UserId) -> list:
        return self._reach(req.userId)

    def addReachMe(self, req: ops.AddReachMe) -> dict:
        items = self._reach(req.userId)
        rid = next(self._ids)
        items.append({"id": rid, "enabled": True, "priority": len(items) + 1, "timeToRing": req.timeToRing,
                      "type": req.type, "value": req.value})
        return {"code": 200, "id": rid}

    def _reach_item(self, uid: int, rid: int) -> dict[str, Any]:
        for item in self._reach(uid):
            if item["id"] == rid:
                return item
        raise SimError(f"ReachMe {rid} not found", code=404)

    def modifyReachMe(self, req: ops.ModifyReachMe) -> dict:
        self._reach_item(req.userId, req.reachMeId).update(self._fields(req, exclude={"userId", "reachMeId"}))
        return OK

    def removeReachMe(self, req: ops.RemoveReachMe) -> dict:
        item = self._reach_item(req.userId, req.reachMeId)
        self.reach_me[req.userId].remove(item)
        return OK

    def modifyReachMeConfig(self, req: ops.ModifyReachMeConfig) -> dict:
        user = self._user(req.userId)
        self.reach_me[req.userId] = [
            {**item.model_dump(), "id": item.id or next(self._ids), "priority": item.priority or n}
            for n, item in enumerate(req.reachMes, start=1)
        ]
        user.update(self._fields(req, exclude={"userId", "reachMes"}))
        return OK

    # ---- numbers ----------------------------------------------------------------------

    def getDIDs(self, req: ops.NoParams) -> list:
        return list(self.dids.values())

    def getDIDCountries(self, req: ops.DidType) -> list:
        return self.countries

    def getDIDStates(self, req: ops.CountryId) -> list:
        return self.states.get(req.countryId, [])

    def getDIDGroups(self, req: ops.DidGroupQuery) -> list:
        return [g for g in self.did_groups if g["countryCodeA3"] == req.countryId and g["type"] == req.type]

    def buyDID(self, req: ops.BuyDid) -> dict:
        group = next((g for g in self.did_groups if g["didGroupId"] == req.didGroupId), None)
        if group is None:
            raise SimError(f"DID group {req.didGroupId} not found", code=404)
        if group["stock"] <= 0:
            raise SimError("no numbers left in this group", code=409)
        group["stock"] -= 1
        did = max(self.dids) + 1
        number = f"34{group['areaCode']}{did:07d}"
        self.dids[did] = {"id": did, "number": number, "type": "general", "user": "General",
                          "description": group["description"], "created": datetime.now(timezone.utc).date().isoformat(),
                          "monthlyCost": group["monthly100"] / 100}
        return {"id": did}

    def cancelDID(self, req: ops.CancelDid) -> dict:
        if self.dids.pop(req.didId, None) is None:
            raise SimError(f"DID {req.didId} not found", code=404)
        return OK

    def _did_by_number(self, number: str) -> dict[str, Any]:
        for did in self.dids.values():
            if did["number"] == number:
                return did
        raise SimError(f"number {number} not found", code=404)

    def assignDID(self, req: ops.AssignDid) -> dict:
        user = self._user(req.userId)
        self._did_by_number(req.number).update(type="personal", user=f"{user['name']} ({user['extNumber']})")
        return OK

    def unAssignDID(self, req: ops.UnassignDid) -> dict:
        self._did_by_number(req.number).update(type="general", user="General")
        return OK

    # ---- presence and calls -----------------------------------------------------------

    def getNotifications(self, req: ops.NoParams) -> dict:
        return {"presenceStatus": self.presence[SESSION_USER]}

    def changePresenceStatus(self, req: ops.ChangePresence) -> dict:
        self._user(req.userId)
        self.presence[req.userId] = req.status
        return OK

    def makeCall(self, req: ops.MakeCall) -> dict:
        uuid = f"live-{next(self._ids)}"
        self.live_calls[uuid] = {"user": SESSION_USER, "with": req.number, "transfer": None}
        return {"code": 200, "uuid": uuid}

    def isOnCall(self, req: ops.NoParams) -> dict:
        return {"code": 200, "uuid": self.session_call()}

    def transferCall(self, req: ops.TransferCall) -> dict:
        if not any(u["extNumber"] == req.to for u in self.users.values()):
            raise SimError(f"extension {req.to} not found", code=404)
        self._live(req.uuid)["transfer"] = req.to
        return OK

    def revertTransfer(self, req: ops.CallUuid) -> dict:
        call = self._live(req.uuid)
        if call["transfer"] is None:
            raise SimError("no transfer in progress", code=409)
        call["transfer"] = None
        return OK

    def hangupCall(self, req: ops.CallUuid) -> dict:
        call = self.live_calls.pop(req.uuid, None)
        if call is None:
            raise SimError(f"call {req.uuid} not found", code=404)
        return OK

    def getCallsPost(self, req: ops.CallsQuery) -> dict:
        calls = self.calls
        if req.fechaInicio:
            calls = [c for c in calls if c["Date"][:10] >= req.fechaInicio]
        if req.fechaFin:
            calls = [c for c in calls if c["Date"][:10] <= req.fechaFin]
        if req.tipo:
            calls = [c for c in calls if c["Direction"].lower() == req.tipo]
        if req.searchTerm:
            calls = [c for c in calls if req.searchTerm in (c["Searchable"] or "") or req.searchTerm in c["Src"]]
        page = req.pagina or 0
        # Newest start first; a call joins the log when it ends, so a long one sits behind later starts.
        listed = sorted(reversed(calls), key=lambda c: c["Date"], reverse=True)
        return {"llamadas": listed[page * 50 : page * 50 + 50]}

    def getCallRecord(self, req: ops.CallId) -> bytes:
        if not any(c["Id"] == req.callId for c in self.calls):
            raise SimError(f"call {req.callId} not found", code=404)
        if req.callId not in self.recordings:
            raise SimError(f"call {req.callId} has no recording: not found", code=404)
        return synth(self.recordings[req.callId], "flac", pitch=300 + int(req.callId) % 200)

    # ---- voicemail --------------------------------------------------------------------

    def modifyUsersVoiceMail(self, req: ops.GroupUsers) -> dict:
        ids = [u["id"] if isinstance(u, dict) else u for u in req.users]
        self._group(req.id)["voiceMail"]["Users"] = [{"id": i} for i in ids]
        return OK

    modifyUsersVoicemail = modifyUsersVoiceMail

    def toggleVoiceMail(self, req: ops.VoiceMailUser) -> dict:
        user = self._user(req.kenkeniUserId)
        user["voiceMail"] = not user["voiceMail"]
        return OK

    def saveVoiceMailPin(self, req: ops.VoiceMailPin) -> dict:
        self._user(req.kenkeniUserId)["voiceMailPin"] = req.pin.get_secret_value()
        return OK

    def addToVoicemail(self, req: ops.AddToVoicemail) -> dict:
        self._user(req.userId)
        users = self._group(req.ringGroupId)["voiceMail"]["Users"]
        if {"id": req.userId} not in users:
            users.append({"id": req.userId})
        return OK

    def getVoiceMailMessages(self, req: ops.VoiceMailQuery) -> dict:
        box = "" if req.general == "0" else req.general

        def day(m: dict[str, Any]) -> str:
            return datetime.fromtimestamp(m["date"], MADRID).date().isoformat()

        found = [m for m in self.voicemail.values() if m["folder"] == req.folder and m["box"] == box
                 and (not req.fechaInicio or day(m) >= req.fechaInicio) and (not req.fechaFin or day(m) <= req.fechaFin)]
        start = (req.pagina or 0) * VOICEMAIL_PAGE
        page = found[start : start + VOICEMAIL_PAGE]
        return {"filasPorPagina": len(page), "mensajes": [{k: m[k] for k in ("id", "callerid", "date", "tags")} for m in page],
                "totalMensajes": len(found)}

    def deleteVoiceMailMessages(self, req: ops.DeleteVoiceMail) -> dict:
        self._voicemail(req.id)
        del self.voicemail[req.id]
        return OK

    def playVoiceMailMessage(self, req: ops.PlayVoiceMail) -> bytes:
        self._voicemail(req.messageId)
        return synth(2.0, "wav", pitch=520)

    def archiveVoiceMailMessage(self, req: ops.ArchiveVoiceMail) -> dict:
        self._voicemail(req.id)["folder"] = "old"
        return OK

    def getVoiceMail(self, req: ops.GroupVoiceMailQuery) -> dict:
        return {"voiceMail": self._group(req.kenkeniGroupId)["voiceMail"]}

    def modifyVoiceMail(self, req: ops.ModifyVoiceMail) -> dict:
        vm = self._group(req.id)["voiceMail"]
        if req.email is not None:
            vm["Email"] = req.email
        if req.enabled is not None:
            vm["Enabled"] = req.enabled
        return OK

    # ---- ring groups ------------------------------------------------------------------

    def _public_group(self, group: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in group.items() if k[0].isupper()}

    def getRingGroup(self, req: ops.GroupId) -> dict:
        return self._public_group(self._group(req.id))

    def getRingGroups(self, req: ops.NoParams) -> list:
        return [self._public_group(g) for g in self.groups.values()]

    def modifyRingGroup(self, req: ops.ModifyRingGroup) -> dict:
        group = self._group(req.id)
        for field, key in (("name", "Name"), ("policy", "Policy"), ("priority", "Priority"), ("timeout", "Timeout")):
            if getattr(req, field) is not None:
                group[key] = getattr(req, field)
        if req.members is not None:
            for m in req.members:
                self._user(m.id)
            group["Members"] = [m.model_dump() for m in req.members]
        return OK

    editGroup = modifyRingGroup

    def addGroup(self, req: ops.AddGroup) -> dict:
        gid = max(self.groups) + 1
        self.groups[gid] = {**{k: v for k, v in self.groups[10].items()}, "Id": gid, "Name": req.name, "Members": [],
                            "Dids": [], "voiceMail": {"Id": f"vm{gid}", "Enabled": False, "Email": None, "Users": []}}
        self.modifyRingGroup(ops.ModifyRingGroup(id=gid, **req.model_dump(exclude_none=True, exclude={"name"})))
        return {"code": 200, "id": gid}

    def deleteRingGroup(self, req: ops.GroupId) -> dict:
        self._group(req.id)
        del self.groups[req.id]
        return OK

    def addToRingGroup(self, req: ops.AddToRingGroup) -> dict:
        self._user(req.userId)
        members = self._group(req.ringGroupId)["Members"]
        if not any(m["id"] == req.userId for m in members):
            members.append({"id": req.userId, "type": "user"})
        return OK

    # ---- schedules --------------------------------------------------------------------

    def getTimeSchedules(self, req: ops.TimeScheduleQuery) -> dict:
        group = self._group(req.kenkeniGroupId)
        found = [s for s in self.schedules.values() if s["KenkeniRginGroupsId"] == req.kenkeniGroupId]
        return {"timeSchedules": found, "timezone": group["TimeZone"]}

    def modifyTimeSchedule(self, req: ops.ModifyTimeSchedule) -> dict:
        schedule = self._schedule(req.id)
        if req.name:
            schedule["Name"] = req.name
        if req.startHour or req.endHour:
            start, end = (schedule["HourRange"] or "00:00-23:59").split("-")
            schedule["HourRange"] = f"{req.startHour or start}-{req.endHour or end}"
        if req.periodicy:
            schedule["Perodicy"] = req.periodicy.model_dump(exclude_none=True)
        return OK

    def switchTimeSchedule(self, req: ops.SwitchTimeSchedule) -> dict:
        self._schedule(req.id)["Enabled"] = req.enabled
        return OK

    def addTimeSchedule(self, req: ops.AddTimeSchedule) -> dict:
        self._group(req.kenkeniGroupId)
        sid = max(self.schedules) + 1
        hours = f"{req.startHour}-{req.endHour}" if req.startHour and req.endHour else None
        self.schedules[sid] = {
            "Id": sid, "Enabled": True, "KenkeniRginGroupsId": req.kenkeniGroupId, "Logic": req.logic, "Date": req.date,
            "HourRange": hours, "Perodicy": req.periodicy.model_dump(exclude_none=True) if req.periodicy else None,
            "Section": req.section, "Name": req.name,
        }
        return {"code": 200, "id": sid}

    def deleteTimeSchedule(self, req: ops.ScheduleId) -> dict:
        self._schedule(req.id)
        del self.schedules[req.id]
        return OK

    # ---- group settings ---------------------------------------------------------------

    def changeTimezone(self, req: ops.ChangeTimezone) -> dict:
        self._group(req.kenkeniRingGroupId)["TimeZone"] = req.timezone
        return OK

    def uploadWaitMusic(self, req: ops.UploadWaitMusic) -> dict:
        name = req.fileName or f"custom-{req.kenkeniRingGroupId}.wav"
        if not req.file:
            raise SimError("empty file", code=400)
        self.musics.append(name)
        self._group(req.kenkeniRingGroupId)["music"] = name
        return OK

    def getMusicOnHold(self, req: ops.RingGroupRef) -> dict:
        group = self._group(req.kenkeniRingGroupId)
        return {"fileName": group["music"], "publicNumberTone": group["PublicNumberTone"],
                "musics": [{"mCategory": "moh", "mPath": m} for m in self.musics]}

    def changeMusicOnHold(self, req: ops.ChangeMusicOnHold) -> dict:
        if req.fileName not in self.musics:
            raise SimError(f"music {req.fileName} not found", code=404)
        self._group(req.kenkeniRingGroupId)["music"] = req.fileName
        return OK

    def modifyPublicNumberTone(self, req: ops.ModifyPublicNumberTone) -> dict:
        self._group(req.kenkeniRingGroupId)["PublicNumberTone"] = req.newValue
        return OK

    def getLocutions(self, req: ops.LocutionsQuery) -> list:
        group = self._group(req.kenkeniRingGroupId)
        return [{"Id": f"{group['Id']}-{fn}", "Enabled": on, "FileName": name, "LocutionType": f"{fn}_{group['Name']}"}
                for fn, (name, on) in group["locutions"].items()]

    def modifyLocution(self, req: ops.ModifyLocution) -> dict:
        self._group(req.kenkeniGroupId)["locutions"][req.locutionType] = (req.fileName, req.enabled)
        return OK

    def getCallRecordingConfig(self, req: ops.GroupRef) -> dict:
        return {"recordIncoming": self._group(req.kenkeniGroupId)["RecordIncoming"]}

    def modifyCallRecordingConfig(self, req: ops.ModifyCallRecordingConfig) -> dict:
        self._group(req.kenkeniGroupId)["RecordIncoming"] = req.incoming
        return OK

    def getMissedCallsNotification(self, req: ops.GroupRef) -> dict:
        return {"missedCallsNotificacion": self._group(req.kenkeniGroupId)["missedCalls"]}

    def modifyMissedCallNotification(self, req: ops.ModifyMissedCallNotification) -> dict:
        if req.enable and not req.email:
            raise SimError("an e-mail is needed to enable notifications", code=400)
        group = self._group(req.kenkeniGroupId)
        group["missedCalls"] = group["MissedCallsEmail"] = req.email if req.enable else None
        return OK

    # ---- sounds, voices, reports, general ---------------------------------------------

    def getSounds(self, req: ops.NoParams) -> dict:
        return {"sounds": self.sounds}

    def uploadSound(self, req: ops.UploadSound) -> dict:
        if not req.file:
            raise SimError("empty file", code=400)
        self.sounds.append({"mCategory": "personal", "mPath": req.fileName or f"sound-{next(self._ids)}.wav"})
        return OK

    def getVoices(self, req: ops.VoicesQuery) -> list:
        return self.voices[req.locale]

    def setVoiceText(self, req: ops.SetVoiceText) -> dict:
        if not any(v["Id"] == req.voiceId for vs in self.voices.values() for v in vs):
            raise SimError(f"voice {req.voiceId} not found", code=404)
        self.sounds.append({"mCategory": "personal", "mPath": req.fileName})
        return OK

    def getKPIs(self, req: ops.KpiQuery) -> dict:
        start = datetime.fromisoformat(req.fechaInicio).replace(tzinfo=MADRID)
        end = datetime.fromisoformat(req.fechaFin).replace(tzinfo=MADRID)
        step = {"minutes": 60, "hours": 3600, "days": 86400, "weeks": 604800, "months": 2592000}[req.interval]
        edges = []
        t = start
        while t < end and len(edges) < 500:
            edges.append((int(t.timestamp()), int(min(t + timedelta(seconds=step), end).timestamp())))
            t += timedelta(seconds=step)
        n = len(edges)
        total = [len(self.calls)] * n
        return {"intervalos": [{"inicio": a, "fin": b} for a, b in edges], "totalCalls": total, "answeredCalls": total,
                "notAnsweredCalls": [0] * n, "abandonRate": [0.0] * n, "avgAnsweredCalls": [100.0] * n,
                "avgDuration": [1.5] * n, "avgHandleTime": [1.2] * n, "blocked": [0] * n, "callsCost": [0.0] * n,
                "serviceLevel": [100.0] * n, "timeInQueue": [0.1] * n}

    def getLangs(self, req: ops.NoParams) -> list:
        return [{"code": "es_ES", "description": "Español"}, {"code": "en_US", "description": "English"}]

    def getCallerIds(self, req: ops.CallerIdsQuery) -> list:
        ids = [{"type": "main", "cli": d["number"], "description": d["number"][2:]} for d in self.dids.values() if d["type"] == "general"]
        if req.userid:
            user = self._user(int(req.userid))
            ids += [{"type": "personal", "cli": d["number"], "description": d["number"][2:]}
                    for d in self.dids.values() if d["type"] == "personal" and user["extNumber"] in (d["user"] or "")]
        return ids
