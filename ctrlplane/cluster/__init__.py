"""A cluster of control-plane processes: nodes, placement of host-bound instances, sharding."""
