import CoreMetrics
import NIOConcurrencyHelpers
import Prometheus

/// swift-metrics' factory for dlmd's metrics: every metric made through it (`CoreMetrics.Counter`, `Gauge`, `Meter`,
/// `Recorder`, `Timer` with `factory:`) lives in a swift-prometheus registry, with the help text given for its name
/// (`document`). swift-prometheus's own factory registers every metric without help text, which `promtool check
/// metrics` flags, and the registry refuses a second registration of a name with other help; so dlmd brings its own.
/// Not bootstrapped as the process-wide `MetricsSystem`: dlmd passes it where it makes a metric.
final class DocumentedPrometheusFactory: MetricsFactory, Sendable {
    let registry: PrometheusCollectorRegistry
    private let help = NIOLockedValueBox<[String: String]>([:])
    /// swift-prometheus's factory, for its default histogram buckets.
    private let defaults: PrometheusMetricsFactory

    init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
        defaults = PrometheusMetricsFactory(registry: registry)
    }

    /// The help text of the metric `name` (its full Prometheus name, e.g. `dlm_locks`), for every later registration.
    func document(_ name: String, _ text: String) {
        help.withLockedValue { $0[name] = text }
    }

    /// The metric `name` (already a whole Prometheus name) with its help text.
    private func descriptor(_ name: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help.withLockedValue { $0[name] ?? "" })
    }

    func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        registry.makeCounter(descriptor: descriptor(label), labels: dimensions)
    }

    func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        registry.makeCounter(descriptor: descriptor(label), labels: dimensions)
    }

    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        guard aggregate else { return registry.makeGauge(descriptor: descriptor(label), labels: dimensions) }
        return registry.makeValueHistogram(
            descriptor: descriptor(label), labels: dimensions, buckets: defaults.defaultValueHistogramBuckets)
    }

    func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
        registry.makeGauge(descriptor: descriptor(label), labels: dimensions)
    }

    func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        registry.makeDurationHistogram(
            descriptor: descriptor(label), labels: dimensions, buckets: defaults.defaultDurationHistogramBuckets)
    }

    func destroyCounter(_ handler: any CounterHandler) {}
    func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) {}
    func destroyRecorder(_ handler: any RecorderHandler) {}
    func destroyMeter(_ handler: any MeterHandler) {}
    func destroyTimer(_ handler: any TimerHandler) {}
}
