"""For the platform, not for people: health probes and Prometheus metrics. May import every
package before it."""
