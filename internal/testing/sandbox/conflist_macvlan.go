package sandbox

// Macvlan is the reference macvlan configuration: a child of master (""
// for the interface of the default route) in mode ("" for bridge), with
// the given IPAM (nil for an L2-only interface).
func Macvlan(master, mode string, ipam Conf) Conf {
	return lowerConf("macvlan", master, mode, ipam)
}

// IPVlan is the reference ipvlan configuration: a child of master in mode
// ("" for l2) with the given IPAM (nil when chained after a plugin whose
// result has addresses).
func IPVlan(master, mode string, ipam Conf) Conf {
	return lowerConf("ipvlan", master, mode, ipam)
}

func lowerConf(typ, master, mode string, ipam Conf) Conf {
	c := Conf{"type": typ}
	if master != "" {
		c["master"] = master
	}
	if mode != "" {
		c["mode"] = mode
	}
	if ipam != nil {
		c["ipam"] = ipam
	}
	return c
}
