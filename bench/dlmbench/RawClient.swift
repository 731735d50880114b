import DLMCore
import DLMWire
import Glibc
import NIOCore

/// A client of dlmd without DLMClient or NIO: blocking reads and writes on the Unix socket, one request at
/// a time, frames encoded and decoded with DLMWire (`--api raw`). It measures the daemon with the least
/// client in front of it, as `rtt` measures the socket alone.
final class RawClient {
    let fd: Int32
    var inbound = ByteBufferAllocator().buffer(capacity: 4096)
    var outbound = ByteBufferAllocator().buffer(capacity: 256)
    var scratch = [UInt8](repeating: 0, count: 4096)
    var nextTag: UInt32 = 1
    var lockspace: UInt32 = 0

    /// Connects, says HELLO and opens (creating) `lockspace`.
    init(socket path: String, lockspace name: String) {
        fd = unixSocket()
        guard connectUnix(fd, path) else { fail("cannot connect to \(path)") }
        send(.hello(Hello(pid: UInt32(getpid()), clientName: "dlmbench-raw")))
        guard case .helloReply = receive() else { fail("no HELLO_REPLY") }
        send(.openLockspace(tag: tag(), name: Array(name.utf8), valueBlockLength: 0, create: true))
        guard case .lockspace(_, let id, _, _) = receive() else { fail("cannot open the lockspace") }
        lockspace = id
    }

    deinit { close(fd) }

    func tag() -> UInt32 {
        defer { nextTag &+= 1 }
        return nextTag
    }

    func send(_ message: ClientMessage) {
        outbound.clear()
        message.encode(into: &outbound)
        writeOutbound()
    }

    /// Writes everything in `outbound`.
    func writeOutbound() {
        let ok = outbound.withUnsafeReadableBytes { raw in
            var done = 0
            while done < raw.count {
                let n = write(fd, raw.baseAddress! + done, raw.count - done)
                if n > 0 {
                    done += n
                } else if !(n < 0 && errno == EINTR) {
                    return false
                }
            }
            return true
        }
        guard ok else { fail("write to dlmd failed") }
    }

    func receive() -> ServerMessage {
        while true {
            do throws(WireError) {
                if let (type, frame) = try nextFrame(from: &inbound, maxLength: WireLimits.maxServerFrame) {
                    var body = frame
                    let message = try ServerMessage.decode(type: type, body: &body)
                    inbound.discardReadBytes()
                    return message
                }
            } catch {
                fail("a malformed frame from dlmd: \(error)")
            }
            let n = scratch.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { fail("dlmd closed the connection") }
            _ = scratch.withUnsafeBytes { inbound.writeBytes(UnsafeRawBufferPointer(rebasing: $0[..<n])) }
        }
    }

    /// LOCK (EX, no blocking callbacks) and wait for its COMPLETION; returns the lock id.
    func lock(_ name: [UInt8], mode: LockMode = .ex) -> UInt32 {
        send(.lock(LockMessage(tag: tag(), lockspace: lockspace, mode: mode, options: [], name: name)))
        guard case .completion(let completion) = receive(), completion.status == .granted else {
            fail("the lock was not granted at once")
        }
        return completion.lock
    }

    func unlock(_ lock: UInt32) {
        send(.unlock(UnlockMessage(tag: tag(), lock: lock)))
        guard case .completion(let completion) = receive(), completion.status == .unlocked else {
            fail("the unlock failed")
        }
    }

    /// Locks every name in `mode` with up to `depth` requests in flight; the lock ids, in the order of `names`.
    /// Every lock must be granted at once.
    func lockAll(_ names: [[UInt8]], mode: LockMode, flags: LockFlags = [], depth: Int = 256) -> [UInt32] {
        var ids = [UInt32](repeating: 0, count: names.count)
        var index: [UInt32: Int] = [:]
        var sent = 0
        var done = 0
        while done < names.count {
            outbound.clear()
            while sent < names.count && sent - done < depth {
                let tag = tag()
                index[tag] = sent
                ClientMessage.lock(
                    LockMessage(
                        tag: tag, lockspace: lockspace, flags: flags, mode: mode, options: [], name: names[sent])
                )
                .encode(into: &outbound)
                sent += 1
            }
            if outbound.readableBytes > 0 { writeOutbound() }
            guard case .completion(let completion) = receive(), completion.status == .granted,
                let slot = index.removeValue(forKey: completion.tag)
            else { fail("a lock was not granted at once") }
            ids[slot] = completion.lock
            done += 1
        }
        return ids
    }

    /// Unlocks every lock of `ids` with up to `depth` requests in flight.
    func unlockAll(_ ids: [UInt32], depth: Int = 256) {
        var sent = 0
        var done = 0
        while done < ids.count {
            outbound.clear()
            while sent < ids.count && sent - done < depth {
                ClientMessage.unlock(UnlockMessage(tag: tag(), lock: ids[sent])).encode(into: &outbound)
                sent += 1
            }
            if outbound.readableBytes > 0 { writeOutbound() }
            guard case .completion(let completion) = receive(), completion.status == .unlocked else {
                fail("an unlock failed")
            }
            done += 1
        }
    }

    /// Lock+unlock pairs until the window ends.
    func pairs(names: [[UInt8]], window: Window) -> ClientResult {
        var result = ClientResult()
        var index = 0
        while true {
            let start = nowNanoseconds()
            if start >= window.end { break }
            let id = lock(names[index])
            let granted = nowNanoseconds()
            unlock(id)
            index = index + 1 == names.count ? 0 : index + 1
            result.completedPair(start: start, granted: granted, end: nowNanoseconds(), in: window)
        }
        return result
    }
}

/// Runs `body` on a new thread; `join` waits for it and returns its result.
final class BenchThread {
    var thread = pthread_t()
    var result = ClientResult()
    let body: () -> ClientResult

    init(_ body: @escaping () -> ClientResult) {
        self.body = body
    }

    func start() -> BenchThread {
        let context = Unmanaged.passRetained(self).toOpaque()
        let status = pthread_create(&thread, nil, benchThreadMain, context)
        if status != 0 { fail("cannot start a thread") }
        return self
    }

    func join() -> ClientResult {
        pthread_join(thread, nil)
        return result
    }
}

private func benchThreadMain(_ context: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    let thread = Unmanaged<BenchThread>.fromOpaque(context!).takeRetainedValue()
    thread.result = thread.body()
    return nil
}
