#!/usr/bin/python3
import os, sys, json
print("lab-runner: groups", {g: os.listdir(f"/sys/kernel/iommu_groups/{g}/devices") for g in os.listdir("/sys/kernel/iommu_groups")}, flush=True)
print("lab-runner: /dev/vfio", os.listdir("/dev/vfio"), "kvm", os.path.exists("/dev/kvm"), flush=True)
open(sys.argv[2] + "/summary.txt", "w").write("PASS stub\n")
