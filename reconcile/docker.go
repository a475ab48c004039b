package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"
)

// Docker reads dockerd's view of networks through its Engine API, over the
// unix socket the managed plugin has mounted (settable: see config.json).
type Docker struct {
	client *http.Client
}

// NewDocker talks to dockerd at the unix socket path.
func NewDocker(socket string) *Docker {
	return &Docker{client: &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		}},
	}}
}

// Network is what reconciliation needs of `docker network inspect`.
type Network struct {
	ID         string `json:"Id"`
	Name       string
	Driver     string
	Options    map[string]string
	Internal   bool
	EnableIPv6 bool
	IPAM       struct {
		Driver  string
		Options map[string]string
		Config  []struct {
			Subnet             string
			IPRange            string
			Gateway            string
			AuxiliaryAddresses map[string]string
		}
	}
	Containers map[string]Attached
	// ours: the network's driver is this plugin.
	ours bool
}

// Attached is a container's endpoint on a network, as the network shows it.
type Attached struct {
	Name        string
	EndpointID  string
	MacAddress  string
	IPv4Address string
	IPv6Address string
}

// Plugins returns the names (with tag, as networks show them) of the
// managed plugins that run vxbridge: dockerd knows the plugin by the name
// its user gave it, the plugin only by its entrypoint. Disabled ones count:
// a plugin being enabled shows as disabled until it serves.
func (d *Docker) Plugins(ctx context.Context) ([]string, error) {
	var list []struct {
		Name   string
		Config struct{ Entrypoint []string }
	}
	if err := d.get(ctx, "/plugins", &list); err != nil {
		return nil, err
	}
	var names []string
	for _, p := range list {
		if len(p.Config.Entrypoint) > 0 && p.Config.Entrypoint[0] == "/vxbridge" {
			names = append(names, p.Name)
		}
	}
	return names, nil
}

// Networks returns every network dockerd has, with its endpoints. Listing
// leaves the endpoints out, so each network is inspected; one removed in
// between is simply absent.
func (d *Docker) Networks(ctx context.Context) ([]Network, error) {
	var list []Network
	if err := d.get(ctx, "/networks", &list); err != nil {
		return nil, err
	}
	out := make([]Network, 0, len(list))
	for _, n := range list {
		full, err := d.Network(ctx, n.ID)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, full)
	}
	return out, nil
}

// Network inspects one network; ErrNotFound when dockerd has none by id.
func (d *Docker) Network(ctx context.Context, id string) (Network, error) {
	var n Network
	err := d.get(ctx, "/networks/"+id, &n)
	return n, err
}

// ErrNotFound: dockerd has no such object.
var ErrNotFound = errors.New("not found in dockerd")

func (d *Docker) get(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker"+path, nil)
	if err != nil {
		return err
	}
	res, err := d.client.Do(req)
	if err != nil {
		return fmt.Errorf("ask dockerd for %s: %w", path, err)
	}
	defer res.Body.Close()
	switch {
	case res.StatusCode == http.StatusNotFound:
		return fmt.Errorf("%s: %w", path, ErrNotFound)
	case res.StatusCode != http.StatusOK:
		return fmt.Errorf("ask dockerd for %s: %s", path, res.Status)
	}
	if err := json.NewDecoder(res.Body).Decode(v); err != nil {
		return fmt.Errorf("decode dockerd's %s: %w", path, err)
	}
	return nil
}

// Container is what the plugin and its CLI need of `docker inspect
// CONTAINER`: its endpoints by network name, for names and for doctor.
type Container struct {
	ID    string `json:"Id"`
	Name  string // with dockerd's leading "/"
	State struct {
		Running bool
		Pid     int // its first process, in the host's PID namespace
	}
	NetworkSettings struct {
		Networks map[string]ContainerNetwork
	}
}

// ContainerNetwork is a container's endpoint on one network.
type ContainerNetwork struct {
	NetworkID         string
	EndpointID        string
	IPAddress         string
	GlobalIPv6Address string
	Aliases           []string
}

// Container inspects one container by name or ID; ErrNotFound when
// dockerd has none.
func (d *Docker) Container(ctx context.Context, nameOrID string) (Container, error) {
	var c Container
	err := d.get(ctx, "/containers/"+url.PathEscape(nameOrID)+"/json", &c)
	return c, err
}

// Event is one of dockerd's events, as /events streams them.
type Event struct {
	Type   string
	Action string
	Actor  struct {
		ID         string
		Attributes map[string]string
	}
}

// Events calls fn with each event matching filters (dockerd's /events
// filters, e.g. {"type":["network"]}) until ctx ends or the stream breaks,
// and returns why it stopped. It calls ready once dockerd has accepted the
// stream, so the caller can read the state it covers from then on.
func (d *Docker) Events(ctx context.Context, filters map[string][]string, ready func(), fn func(Event)) error {
	f, _ := json.Marshal(filters)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/events?filters="+url.QueryEscape(string(f)), nil)
	if err != nil {
		return err
	}
	// The stream lasts: no client timeout, only ctx.
	c := *d.client
	c.Timeout = 0
	res, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("ask dockerd for events: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("ask dockerd for events: %s", res.Status)
	}
	ready()
	dec := json.NewDecoder(res.Body)
	for {
		var e Event
		if err := dec.Decode(&e); err != nil {
			return fmt.Errorf("dockerd's events: %w", err)
		}
		fn(e)
	}
}
