import Foundation

/// User and system CPU seconds of process `pid` so far (/proc/PID/stat, fields 14 and 15).
public func processCPUTimes(_ pid: Int32) throws -> (user: Double, system: Double) {
    let text = try String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)
    // The fields after the command name (in parentheses): state is the 3rd field, utime the 14th.
    guard let close = text.lastIndex(of: ")") else { throw SupportError("unreadable /proc/\(pid)/stat") }
    let fields = text[text.index(after: close)...].split(separator: " ")
    guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else {
        throw SupportError("unreadable /proc/\(pid)/stat")
    }
    let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
    return (user / ticks, system / ticks)
}

/// User plus system CPU seconds of process `pid` so far.
public func processCPUSeconds(_ pid: Int32) throws -> Double {
    let times = try processCPUTimes(pid)
    return times.user + times.system
}

/// CPU seconds of the calling thread so far.
public func threadCPUSeconds() -> Double {
    var time = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
    return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
}
