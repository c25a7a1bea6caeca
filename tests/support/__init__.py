"""Start real registry components (token server, Distribution, dockerd, containerd,
pullcache) on loopback for tests and the benchmark, and seed them with images."""
