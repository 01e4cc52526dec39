import Logging
import QMPProxy
import QMPRuntime
import QMPWire
import VFIOTracking

#if canImport(Glibc)
import Glibc
#endif

/// Shutdown with a bounded drain, and the client gate: clients wait while cold-plugged VFIO devices
/// are discovered, so none acts on a device the sidecar does not know yet.
extension SidecarCore {
    // MARK: Shutdown

    /// Graceful shutdown (SIGTERM/SIGINT): no new clients; the hooks broadcast what they hold (hold
    /// mode's withheld `DEVICE_DELETED` events), clients get their queued output (bounded by
    /// `drainTimeout`), then the loop stops.
    func shutdown(drainTimeout: Duration = .seconds(2)) {
        logger.info("shutting down", metadata: ["clients": "\(clients.count)"])
        for listener in listeners { listener.close() }
        listeners = []
        hooks?.shutdown()
        drainThenStop(deadline: .now + drainTimeout)
    }

    func drainThenStop(deadline: ContinuousClock.Instant) {
        let pending = clients.values.reduce(0) { $0 + $1.pendingBytes }
        guard pending > 0, ContinuousClock.now < deadline else {
            if pending > 0 {
                logger.warning(
                    "clients did not read their last output before shutdown", metadata: ["bytes": "\(pending)"])
            }
            for client in clients.values { client.close() }
            instruments?.flush()
            reactor.stop()
            return
        }
        reactor.schedule(after: .milliseconds(5)) { self.drainThenStop(deadline: deadline) }
    }

    // MARK: Client gate

    /// Clients' commands wait (in the router) until the hooks' cold-plug discovery is complete: a
    /// client's `device_del` forwarded earlier could bring a `DEVICE_DELETED` for a device not yet
    /// tracked, whose group would then never be released.
    func startDiscoveryGate(_ hooks: any SidecarVFIOHooks) {
        gateGeneration += 1
        let generation = gateGeneration
        let timeout = configuration.discoveryGateTimeout
        gateTimer = reactor.schedule(after: timeout) {
            guard self.gateGeneration == generation else { return }
            self.gateTimer = nil
            self.logger.warning(
                "cold-plug discovery not finished in time: forwarding client commands anyway (devices not yet discovered are not tracked)",
                metadata: ["timeout": "\(timeout)", "held-commands": "\(self.router.gatedCommands)"])
            self.openClientGate()
        }
        // Two start-up answers open the gate: who emits the group events, and cold-plug discovery.
        var outstanding = 2
        let answered = {
            guard self.gateGeneration == generation else { return }
            outstanding -= 1
            guard outstanding == 0 else { return }
            self.logger.debug("cold-plug discovery done; forwarding client commands")
            self.openClientGate()
        }
        groupEvents = .sidecar
        sendInternalCommand("query-qmp-schema", arguments: nil) { reply in
            guard self.gateGeneration == generation else { return }
            self.groupEvents = reply.jsonValue(.returnValue).map(GroupEventSource.detect) ?? .sidecar
            if self.groupEvents == .qemu {
                self.logger.info(
                    "QEMU emits GROUP_RELEASED and GROUP_RELEASE_TIMEOUT itself: forwarding its events, synthesizing none",
                    metadata: ["group-events": "qemu"])
            }
            answered()
        }
        hooks.upstreamReady(qemuPID: qemuPID) { answered() }
    }

    func openClientGate() {
        if let gateTimer { reactor.cancel(gateTimer) }
        gateTimer = nil
        perform(router.openClientGate())
        updateClientReading()
    }
}
