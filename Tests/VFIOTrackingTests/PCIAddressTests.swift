import Testing
import VFIOTracking

@Suite("PCIAddress: QEMU's host property grammar")
struct PCIAddressTests {
    /// Values QEMU 7.2 accepts for `vfio-pci,host=`, with the address its error texts then name.
    @Test(arguments: [
        ("0000:01:00.0", "0000:01:00.0"), ("01:00.1", "0000:01:00.1"), ("0:0:0.0", "0000:00:00.0"),
        ("00000:00:00.0", "0000:00:00.0"), ("0000:000:00.0", "0000:00:00.0"), ("0000:00:1F.7", "0000:00:1f.7"),
        ("0:0:0.07", "0000:00:00.7"), (" 0:0:0.0", "0000:00:00.0"), ("0x0:0:0.0", "0000:00:00.0"),
        ("-0:0:0.0", "0000:00:00.0"), ("ffff:ff:1f.7", "ffff:ff:1f.7"),
    ])
    func acceptsWhatQEMUAccepts(text: String, canonical: String) {
        #expect(PCIAddress.normalized(text) == canonical)
    }

    /// Values QEMU 7.2 refuses ("Property 'vfio-pci.host' doesn't take value ...").
    @Test(arguments: [
        "zz", "0000:00:20.0", "0000:00:00.8", "0000:00:00.a", "0:0:0.0 ", "5", "", "0000:00:00", "1:0000:00:00.0",
        "10000:00:00.0", "0:100:0.0", "-1:0:0.0", "0x:0:0.0", PCIAddress.unset,
    ])
    func refusesWhatQEMURefuses(text: String) {
        #expect(PCIAddress.normalized(text) == nil)
    }
}
