package sandbox

// Firewall is the firewall plugin's configuration with an ingress policy
// ("" for the default, open) and backend ("" for the plugin's default).
func Firewall(policy, backend string) Conf {
	c := Conf{"type": "firewall"}
	if policy != "" {
		c["ingressPolicy"] = policy
	}
	if backend != "" {
		c["backend"] = backend
	}
	return c
}
