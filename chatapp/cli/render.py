"""What the console shows: events as stable script lines or as human lines, and the transfer status line.

Pure functions of their arguments (the time is passed in), so tests need no
terminal.  Everything that came from the network (names, messages, file names,
reasons) is escaped with :func:`~chatapp.wire.escape_for_terminal` here, at
the one place text becomes output (PROTOCOL.md section 1).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from chatapp.events import (
    ChatRequested,
    FileOffered,
    GaveUp,
    KeyChanged,
    KeyRefused,
    MessageReceived,
    PeerJoined,
    PeerLeft,
    PeerNotice,
    Reconnected,
    Reconnecting,
    ServerLost,
    TransferEnded,
    TransferProgress,
)
from chatapp.peer import Direction, PeerSession, Transfer, TransferState
from chatapp.tls.known_hosts import format_address
from chatapp.wire import escape_for_terminal

from .events import (
    ActiveChat,
    ChatClosed,
    ChatOpened,
    CommandFailed,
    FileOfferSent,
    FingerprintShown,
    HelpLine,
    HelpShown,
    IdentityMade,
    KeyTrusted,
    ListenState,
    LoggedInAgain,
    MessageSent,
    OfferTimedOut,
    PartialRow,
    PartialsCleaned,
    PartialsListed,
    PasswordChanged,
    Progress,
    Quitting,
    Ready,
    SessionReplaced,
    Shown,
    TransferAnswered,
    TransferCancelled,
    TransferResuming,
    TransferRow,
    TransfersListed,
    TransferStalled,
    WhoListed,
    WhoRow,
)
from .rates import Speed, TransferSummary
from .width import fit_ellipsis
from .width import width as cells


def token(value: str) -> str:
    """A field that must stay one space-free token in script output."""
    escaped = escape_for_terminal(value)
    return escaped.replace(" ", "\\x20") if escaped else "-"


def script_line(event: Shown) -> str:
    """``WORD field field... text``: one line, no control characters, the free text last (docs/console.md)."""
    word, fields, text = script_parts(event)
    parts = [word, *(token(f) for f in fields)]
    if text:
        parts.append(escape_for_terminal(text))
    return " ".join(parts)


def script_parts(event: Shown) -> tuple[str, tuple[str, ...], str]:
    """The word, the single-token fields and the free text of ``event``'s script line, unescaped."""
    match event:
        case Ready(user, None):
            return "READY", (user, "online"), ""
        case Ready(user, (host, port)):
            return "READY", (user, "listening", host, str(port)), ""
        case MessageReceived(session, text):
            return "MSG", (_name(session),), text
        case PeerJoined(session):
            return "JOINED", (_name(session),), ""
        case PeerLeft(session, reason):
            return "LEFT", (_name(session),), reason or "closed"
        case ChatRequested(user):
            return "REQUEST", (user,), ""
        case FileOffered(_, t):
            return "OFFER", (str(t.handle), t.peer, str(t.size)), t.name
        case TransferProgress(t):
            return "PROGRESS", (*transfer_fields(t), str(int(t.rate))), ""
        case TransferEnded(t) if t.state is TransferState.DONE:
            return "DONE", (str(t.handle), t.direction.value, t.peer, str(t.size)), t.path or t.name
        case TransferEnded(t):
            return "FAILED", (str(t.handle), t.direction.value, t.peer, state_label(t)), t.reason or t.state.value
        case PeerNotice() | ServerLost() | Reconnecting() | Reconnected() | GaveUp():
            return "NOTICE", (), notice_text(event)
        case CommandFailed(text):
            return "ERROR", (), text
        case HelpLine(text):
            return "HELP", (), text
        case WhoRow(name, state):
            return "WHO", (name, state), ""
        case TransferRow(t):
            return "TRANSFER", transfer_fields(t), t.name
        case WhoListed(count):
            return "OK", ("who", str(count)), ""
        case ChatOpened(user):
            return "OK", ("chat", user), ""
        case MessageSent(to, me, text):
            return "OK", ("msg", to, me), text
        case ActiveChat(user):
            return "OK", ("to", user) if user else ("to",), ""
        case FileOfferSent(handle, to, size, name):
            return "OK", ("send", str(handle), to, str(size)), name
        case TransferAnswered(verb, handle):
            return "OK", (verb, str(handle)), ""
        case TransfersListed(count):
            return "OK", ("transfers", str(count)), ""
        case ChatClosed(user):
            return "OK", ("close", user), ""
        case ListenState(None):
            return "OK", ("listen", "off"), ""
        case ListenState((host, port)):
            return "OK", ("listen", "on", host, str(port)), ""
        case PasswordChanged():
            return "OK", ("passwd",), ""
        case HelpShown():
            return "OK", ("help",), ""
        case Quitting():
            return "OK", ("quit",), ""
    parts = console_script_parts(event)
    if parts is not None:
        return parts
    raise TypeError(f"no script line for {event!r}")


def transfer_fields(t: Transfer) -> tuple[str, ...]:
    """``<id> <send|receive> <peer> <state> <bytes-done> <size>``, shared by TRANSFER and PROGRESS."""
    return (str(t.handle), t.direction.value, t.peer, state_label(t), str(t.bytes_done), str(t.size))


def notice_text(event: PeerNotice | ServerLost | Reconnecting | Reconnected | GaveUp) -> str:
    """What a ``NOTICE`` says: news about a chat or about the server link."""
    match event:
        case PeerNotice(session, text):
            return f"{_name(session)}: {text}"
        case ServerLost(error):
            return f"lost the server connection ({error}); open chats go on"
        case Reconnecting(delay, attempt):
            shown = f"{delay:.1f}" if delay < 10 else f"{delay:.0f}"  # the real delay, jitter included
            return f"reconnecting to the server in {shown} s (attempt {attempt})"
        case Reconnected(user, listening):
            where = f", listening on {format_address(*listening)}" if listening else ""
            return f"reconnected to the server as {user}{where}"
        case GaveUp(error):
            return f"gave up reconnecting to the server: {error}"
    raise TypeError(f"not a notice: {event!r}")


def _name(session: PeerSession) -> str:
    return session.peer_name or "?"


# -- human lines ------------------------------------------------------------------


def clock(now: float) -> str:
    return time.strftime("%H:%M", time.localtime(now))


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_rate(bytes_per_second: float) -> str:
    return f"{human_size(bytes_per_second)}/s"


def human_eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    s = int(seconds + 0.999)
    if s >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 60:02d}:{s % 60:02d}"


def percent(transfer: Transfer) -> int:
    if transfer.size <= 0:
        return 100
    return min(100, transfer.bytes_done * 100 // transfer.size)


def eta(transfer: Transfer) -> float | None:
    left = transfer.size - transfer.bytes_done
    if left <= 0:
        return 0.0
    if transfer.rate <= 0:
        return None
    return left / transfer.rate


MIN_NAME = 6  # cells a file name keeps in the status row before whole entries give way to "+N more"
MAX_PEER = 16  # cells a peer's name takes there at most


def status_line(
    transfers: Iterable[Transfer], width: int = 80, speeds: Callable[[Transfer], Speed] | None = None
) -> str:
    """One line for the running transfers, in ``width`` cells at most, the numbers always shown.

    Names are what gives way: each file name is cut (by display cells, with an
    ellipsis) so that percent, rate and ETA fit; when even short names leave no
    room, as many whole entries as fit are shown, then ``+N more``.
    """
    entries = []
    for t in transfers:
        arrow = "->" if t.direction is Direction.SEND else "<-"
        peer = fit_ellipsis(escape_for_terminal(t.peer), MAX_PEER)
        tail = f" {arrow}{peer} {percent(t)}% {speed_text(t, speeds)}]"
        entries.append((f"[#{t.handle} ", escape_for_terminal(t.name), tail))
    if not entries:
        return ""
    for count in range(len(entries), 0, -1):
        shown = entries[:count]
        more = f" +{len(entries) - count} more" if count < len(entries) else ""
        fixed = sum(cells(head) + cells(tail) for head, _, tail in shown) + count - 1 + cells(more)
        room = width - fixed
        if count == 1 and room < min(cells(shown[0][1]), MIN_NAME):
            # a narrow window: the word "ETA" goes before the name does (the time still shows)
            head, name, tail = shown[0]
            shown = [(head, name, tail.replace(" ETA ", " "))]
            room += 4
        if room >= sum(min(cells(name), MIN_NAME) for _, name, _ in shown) or count == 1:
            # at least an ellipsis for a name: an empty gap ("[#9  ->bob") looks like a file without one
            names = _share([name for _, name, _ in shown], max(room, len(shown)))
            line = " ".join(head + name + tail for (head, _, tail), name in zip(shown, names, strict=True))
            # a window too narrow for even one entry's numbers: cut by cells, never wrap (a stale copy each redraw)
            return fit_ellipsis(line + more, width)
    raise AssertionError("unreachable")


def _share(names: list[str], room: int) -> list[str]:
    """``names`` cut to share ``room`` cells: short ones whole, the rest equally, each with an ellipsis if cut."""
    wanted = [cells(n) for n in names]
    given = [0] * len(names)
    left, open_ = room, list(range(len(names)))
    while open_ and left > 0:
        share = max(left // len(open_), 1)
        still = []
        for i in open_:
            take = min(wanted[i] - given[i], share, left)
            given[i] += take
            left -= take
            if given[i] < wanted[i]:
                still.append(i)
        open_ = still
    return [n if given[i] >= wanted[i] else fit_ellipsis(n, given[i]) for i, n in enumerate(names)]


_DIRECTION_WORD = {Direction.SEND: "to", Direction.RECEIVE: "from"}


def human_line(event: Shown, now: float, auto_accept: bool = False) -> str | None:
    """The text an interactive user sees for ``event`` (None: show nothing), with a HH:MM time first."""
    if isinstance(event, HelpLine):
        return escape_for_terminal(event.text)
    body = human_body(event, auto_accept)
    return None if body is None else f"{clock(now)} {body}"


def human_body(event: Shown, auto_accept: bool = False) -> str | None:
    """``human_line`` without the time; every name and text escaped here."""
    e = escape_for_terminal
    match event:
        case MessageReceived(session, text):
            return f"<{e(_name(session))}> {e(text)}"
        case MessageSent(to, me, text):
            return f"<{e(me)} -> {e(to)}> {e(text)}"
        case PeerJoined(session):
            return f"* chat with {e(_name(session))} is open"
        case PeerLeft(_, "closed"):
            return None  # we closed it (/close, or quitting): "closed the chat with ..." said so
        case PeerLeft(session, reason):
            return f"* chat with {e(_name(session))} closed ({e(reason or 'closed')})"
        case ChatRequested(user):
            return f"* {e(user)} is opening a chat with you"
        case FileOffered(_, t):
            h, size = t.handle, human_size(t.size)
            if auto_accept:
                return f"* {e(t.peer)} sends {e(t.name)} ({size}); accepting it (#{h}, /cancel {h} stops it)"
            if t.already:
                size += f"; {human_size(t.already)} of it already here, /accept resumes"
            return f"* {e(t.peer)} offers {e(t.name)} ({size}): /accept {h} or /reject {h}"
        case TransferProgress():
            return None
        case TransferEnded(t) if t.state is TransferState.DONE:
            if t.direction is Direction.SEND:
                return f"* #{t.handle} sent to {e(t.peer)} ({human_size(t.size)})"
            return f"* #{t.handle} received from {e(t.peer)} ({human_size(t.size)}): {e(t.path or t.name)}"
        case TransferEnded(t) if _our_cancel(t):
            return None  # our /cancel: its own line ("#2 cancelled...") says it, and what was kept
        case TransferEnded(t):
            line = f"* #{t.handle} {_DIRECTION_WORD[t.direction]} {e(t.peer)} ended: {e(end_reason(t))}"
            if t.kept:
                line += f"; {kept_text(t.kept)}"
            return line
        case PeerNotice() | ServerLost() | Reconnecting() | Reconnected() | GaveUp():
            return f"* {e(notice_text(event))}"
        case CommandFailed(text):
            return f"! {e(text)}"
        case WhoRow(name, state):
            return f"  {e(name)} ({e(state)})"
        case TransferRow(t):
            pct = 100 if t.size == 0 else t.bytes_done * 100 // t.size
            word = _DIRECTION_WORD[t.direction]
            label = state_label(t)
            if t.state.final and t.reason and t.reason not in (label, t.state.value):
                label = f"{label} ({e(t.reason)})"  # failed (hash-mismatch), rejected (too-large)...
            return f"  #{t.handle} {e(t.name)} {word} {e(t.peer)}: {label} {pct}% of {human_size(t.size)}"
        case Ready(user, listening):
            where = "not listening (/listen on to accept chats)"
            if listening:
                where = f"listening on {e(format_address(*listening))}"
            return f"* logged in as {e(user)}, {where}; /help lists the commands"
        case WhoListed(count):
            return f"* {count} online"
        case FileOfferSent(handle, to, size, name):
            return f"* #{handle} offered {e(name)} to {e(to)} ({human_size(size)}); waiting for them"
        case ChatOpened(user):
            return f"* chatting with {e(user)}; plain lines go to them"
        case ActiveChat(user):
            return f"* plain lines now go to {e(user)}" if user else "* no active chat"
        case ListenState(listening):
            if listening:
                return f"* listening on {e(format_address(*listening))}"
            return "* not listening: others cannot open chats with you"
        case TransferAnswered(verb, handle):
            return f"* #{handle} {_PAST[verb]}"
        case ChatClosed(user):
            return f"* closed the chat with {e(user)}; a plain line to {e(user)} opens it again"
        case PasswordChanged():
            return "* password changed"
        case TransfersListed(0):
            return "* no transfers yet"
        case TransfersListed() | HelpShown() | Quitting() | HelpLine():
            return None
    return console_human_body(event)


_PAST = {"accept": "accepted", "reject": "rejected", "cancel": "cancelled"}


# -- what the console adds: resumes, recent rates, stalls, summaries, partials, timeouts ---------


def state_label(t: Transfer) -> str:
    """The state word shown for ``t``: a stop asked for by either side reads ``cancelled``, not rejected or failed."""
    if t.state in (TransferState.REJECTED, TransferState.FAILED) and t.reason == "cancelled":
        return TransferState.CANCELLED.value
    return t.state.value


def _our_cancel(t: Transfer) -> bool:
    """``t`` ended by our own cancel: a CANCEL we sent, or a REJECT cancelled of a file coming in."""
    if t.reason != "cancelled":
        return False
    if t.direction is Direction.SEND:
        return t.state is TransferState.CANCELLED
    return t.state is TransferState.REJECTED


def end_reason(t: Transfer) -> str:
    """Why ``t`` ended, in words: who cancelled, or that nobody answered, or the wire's reason."""
    if t.reason == "cancelled":
        if t.direction is Direction.RECEIVE and t.state is TransferState.CANCELLED:
            return "cancelled by the sender"  # their CANCEL; our own /cancel is a REJECT
        if t.direction is Direction.SEND and t.state is TransferState.REJECTED:
            return "cancelled by the receiver"
    if t.reason == "bye":  # the peer's BYE: it closed the chat (or quit) while the file was open
        return f"{t.peer} closed the chat"
    if t.reason == "timed-out":
        return "nobody answered the offer in time"
    if t.reason == "busy" and t.direction is Direction.SEND:
        # the receiver's word covers three cases it does not tell apart (PROTOCOL.md: REJECT busy)
        return f"{t.peer} is busy (receiving that file from you already, or too many files at once)"
    return t.reason or t.state.value


def kept_text(received: int) -> str:
    """What stays of a receive cut short, and how to go on with it."""
    return f"the {human_size(received)} received are kept: the same offer again resumes"


def quit_lines(transfers: list[Transfer], now: float) -> list[str]:
    """What quitting does to the transfers still running: one line each, said before the screen goes."""
    e = escape_for_terminal
    lines = []
    for t in transfers:
        if t.finished:
            continue
        where = f"{clock(now)} * #{t.handle} {e(t.name)} {_DIRECTION_WORD[t.direction]} {e(t.peer)}"
        if t.state is TransferState.OFFERED:
            lines.append(f"{where}: the offer ends unanswered")
        elif t.direction is Direction.SEND:
            lines.append(f"{where} stops at {percent(t)}%: sending it again resumes if the receiver kept it")
        elif t.bytes_done:
            lines.append(f"{where} stops at {percent(t)}%; {kept_text(t.bytes_done)}")
        else:
            lines.append(f"{where} stops before any byte came")
    return lines


def busy_again_line(t: Transfer, now: float) -> str:
    """The refusal of an offer the receiver is already receiving from us (same name and size): why, in words."""
    e = escape_for_terminal
    return (f"{clock(now)} * #{t.handle} {e(t.name)} not sent: {e(t.peer)} is already receiving"
            " a file of that name and size from you")  # fmt: skip


def speed_text(t: Transfer, speeds: Callable[[Transfer], Speed] | None) -> str:
    """``11.3 MiB/s ETA 00:07`` over the recent window, ``stalled 12 s``, ``starting`` in a transfer's first
    half-second, or the average without ``speeds``."""
    if speeds is None:
        return f"{human_rate(t.rate)} ETA {human_eta(eta(t))}"
    speed = speeds(t)
    if speed.stalled is not None:
        return f"stalled {speed.stalled:.0f} s"
    if not speed.measured:
        return "starting"  # not "0 B/s": nothing is wrong, there is no rate yet
    return f"{human_rate(speed.rate)} ETA {human_eta(speed.eta)}"


def human_seconds(seconds: float) -> str:
    if seconds < 1:
        return "under 1 s"  # "0 s" reads as nothing happened
    s = int(seconds + 0.5)
    if s < 60:
        return f"{s} s"
    return human_eta(seconds)


def resume_text(t: Transfer) -> str:
    where = "here" if t.direction is Direction.RECEIVE else "there"
    pct = t.offset * 100 // t.size if t.size else 100
    return f"resuming at {pct} % ({human_size(t.offset)} already {where})"


def console_script_parts(event: Shown) -> tuple[str, tuple[str, ...], str] | None:
    """The script lines of the console's own news (:func:`script_parts` for the rest)."""
    match event:
        case TransferCancelled(handle, kept, discarded):
            extra = ("kept", str(kept)) if kept is not None else ("discarded",) if discarded else ()
            return "OK", ("cancel", str(handle), *extra), ""
        case PartialRow(peer, name, kept, size, modified):
            return "PARTIAL", (peer, str(kept), str(size), str(int(modified))), name
        case PartialsListed(count):
            return "OK", ("partials", str(count)), ""
        case PartialsCleaned(count):
            return "OK", ("partials", "clean", str(count)), ""
        case LoggedInAgain(user, None):
            return "OK", ("reconnect", user, "online"), ""
        case LoggedInAgain(user, (host, port)):
            return "OK", ("reconnect", user, "listening", host, str(port)), ""
        case TransferResuming(t):
            return "RESUME", (str(t.handle), t.direction.value, t.peer, str(t.offset), str(t.size)), ""
        case Progress(t, rate):
            return "PROGRESS", (*transfer_fields(t), str(int(rate))), ""
        case TransferStalled(t, seconds):
            return "STALLED", (str(t.handle), t.direction.value, t.peer, str(int(seconds))), ""
        case TransferSummary(t, moved, seconds, average):
            fields = (str(t.handle), t.direction.value, t.peer, str(moved), f"{seconds:.1f}", str(int(average)))
            return "SUMMARY", fields, ""
        case OfferTimedOut(t, seconds):
            return "TIMEOUT", (str(t.handle), t.peer, str(int(seconds))), t.name
        case SessionReplaced(text):
            return "NOTICE", (), text
        case IdentityMade():
            return "NOTICE", (), identity_made_text(event)
        case KeyRefused(user):
            return "KEYREFUSED", (user,), ""
        case KeyChanged(user, remembered, offered, accepted):
            return "KEYCHANGED", (user, remembered, offered, *(("accepted",) if accepted else ())), ""
        case FingerprintShown(None, fingerprint):
            return "OK", ("fingerprint", fingerprint or "none"), ""
        case FingerprintShown(user, fingerprint):
            return "OK", ("fingerprint", user or "", fingerprint or "none"), ""
        case KeyTrusted(user, _, offered):
            return "OK", ("trust", user, offered), ""
    return None


def identity_made_text(event: IdentityMade) -> str:
    text = (
        f"made a new identity key for {event.user} on this server: {event.fingerprint} (kept in {event.path});"
        " contacts compare it with /fingerprint"
    )
    return text if event.new_account else text + ", and those who chatted with you before see a changed key"


def console_human_body(event: Shown) -> str | None:
    """The human lines of the console's own news (:func:`human_body` for the rest)."""
    e = escape_for_terminal
    match event:
        case TransferCancelled(handle, kept, discarded):
            if kept is not None:
                return (
                    f"* #{handle} cancelled; the {human_size(kept)} on disk are kept: the same offer again resumes"
                    " (/partials lists them, /partials clean deletes them)"
                )
            if discarded:
                return f"* #{handle} cancelled; what was received is deleted"
            return f"* #{handle} cancelled"
        case PartialRow(peer, name, kept, size, modified):
            pct = kept * 100 // size if size else 100
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(modified))
            return f"  {e(name)} from {e(peer)}: {human_size(kept)} of {human_size(size)} ({pct} %), {when}"
        case PartialsListed(count):
            if count == 0:
                return "* no partial files kept"
            return f"* {count} partial file(s) kept for a resume; /partials clean deletes them"
        case PartialsCleaned(count):
            return f"* deleted {count} partial file(s)"
        case LoggedInAgain(user, listening):
            where = f", listening on {e(format_address(*listening))}" if listening else ""
            return f"* logged in again as {e(user)}{where}"
        case TransferResuming(t):
            return f"* #{t.handle} {e(t.name)} {resume_text(t)}"
        case Progress() | TransferStalled():
            return None  # the status row shows them
        case TransferSummary(t, moved, seconds, average):
            rate = f", average {human_rate(average)}" if seconds > 0 else ""
            return f"* #{t.handle} {human_size(moved)} in {human_seconds(seconds)}{rate}"
        case OfferTimedOut(t, seconds):
            what = f"the offer of {e(t.name)} to {e(t.peer)}"
            return f"* #{t.handle} nobody answered {what} in {seconds:.0f} s: cancelled"
        case SessionReplaced(text):
            return f"* {e(text)}"
        case IdentityMade(user, new_account=True):
            return "* made your identity key on this server (/fingerprint shows it, for contacts to compare)"
        case IdentityMade(user):
            # short: it shows at a first login, in whatever window size; /fingerprint has the key
            return (
                f"* made a new identity key for {e(user)} on this server (/fingerprint shows it);"
                " contacts you chatted with before will see it as a changed key"
            )
        case KeyRefused(user):
            return (
                f"! {e(user)} connected and left without a word: most likely {e(user)}'s client refuses your key,"
                f" which is not the one it remembers for you (a new identity key?). Show {e(user)} your"
                f" /fingerprint; {e(user)} can /trust you once it matches"
            )
        case KeyChanged(user, remembered, offered, True):
            return f"! the key of {e(user)} changed from {remembered} to {offered}: accepted, as told"
        case KeyChanged(user, remembered, offered):
            return (
                f"! the key of {e(user)} changed: the chat was refused. Remembered {remembered}, now {offered}."
                f" Someone may be intercepting, or {e(user)} has a new device: compare the new key with"
                f" {e(user)} in person or by voice, and if it is theirs, /trust {e(user)}"
            )
        case FingerprintShown(None, fingerprint):
            return f"* your key on this server: {fingerprint or '(none yet)'}"
        case FingerprintShown(user, None):
            return f"* no key remembered for {e(user or '')} yet (one is at the first chat)"
        case FingerprintShown(user, fingerprint):
            return f"* the key remembered for {e(user or '')}: {fingerprint}"
        case KeyTrusted(user, remembered, offered):
            return f"* the key of {e(user)} is now {offered} (it was {remembered}); chats with {e(user)} open again"
    raise TypeError(f"no human line for {event!r}")
