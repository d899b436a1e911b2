"""Fixtures parametrised over both implementations of the hardware: every
test taking `hw_impl` runs against the C layer and the Python reference."""
import pytest

from xenemu.hw import native, reference

IMPLS = {"c": native, "ref": reference}


@pytest.fixture(params=sorted(IMPLS))
def hw_impl(request):
    return IMPLS[request.param]


@pytest.fixture
def memory(hw_impl):
    return hw_impl.Memory(64 << 20)


@pytest.fixture
def iommu(hw_impl, memory):
    return hw_impl.Iommu(memory, width=39, iotlb_entries=64, iotlb_ways=4,
                         fault_log=8)
