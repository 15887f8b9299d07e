package manifests

import (
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestScalerAddressesReachAScaler follows every mlscale trigger's
// scalerAddress to its Service and on to a pod template that serves the KEDA
// external scaler on that port: cmd/scaler (--address) or the adapter with
// the scaler embedded (--keda-scaler, --scaler-address, the keda-combined
// overlay), with TLS and mutual TLS flags set, as the TriggerAuthentication
// (caCert, tlsClientCert) requires.
func TestScalerAddressesReachAScaler(t *testing.T) {
	for name, objs := range renderAll(t) {
		t.Run(name, func(t *testing.T) {
			for _, so := range ofKind(objs, "ScaledObject") {
				triggers, _, _ := unstructuredSlice(so.Object, "spec", "triggers")
				for i, tr := range triggers {
					tm := tr.(map[string]any)
					if tm["type"] != "external" && tm["type"] != "external-push" {
						continue
					}
					addr, _ := tm["metadata"].(map[string]any)["scalerAddress"].(string)
					where := so.GetName() + " trigger " + strconv.Itoa(i)
					host, port, err := net.SplitHostPort(addr)
					if err != nil {
						t.Errorf("%s: scalerAddress %q: %v", where, addr, err)
						continue
					}
					labels := strings.Split(host, ".")
					if len(labels) < 3 || labels[2] != "svc" {
						t.Errorf("%s: scalerAddress %q is not name.namespace.svc[.cluster.local]", where, addr)
						continue
					}
					svc := find(objs, "Service", labels[1], labels[0])
					if svc == nil {
						t.Errorf("%s: Service %s/%s is not in the overlay", where, labels[1], labels[0])
						continue
					}
					checkScalerBehind(t, objs, into[corev1.Service](t, svc), port, where)
				}
			}
		})
	}
}

func checkScalerBehind(t *testing.T, objs []*unstructured.Unstructured, svc *corev1.Service, port, where string) {
	t.Helper()
	i := slices.IndexFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return strconv.Itoa(int(p.Port)) == port })
	if i < 0 {
		t.Errorf("%s: Service %s has no port %s", where, svc.Name, port)
		return
	}
	target := svc.Spec.Ports[i].TargetPort
	served := 0
	for _, pt := range podTemplates(t, objs) {
		if pt.ns != svc.Namespace || !selects(svc.Spec.Selector, pt.label) {
			continue
		}
		for _, c := range pt.spec.Containers {
			var addrFlag, certFlag, caFlag string
			switch {
			case c.Command[0] == "/scaler":
				addrFlag, certFlag, caFlag = "address", "tls-cert-file", "client-ca-file"
			case c.Command[0] == "/adapter" && slices.Contains(c.Args, "--keda-scaler"):
				addrFlag, certFlag, caFlag = "scaler-address", "scaler-tls-cert-file", "scaler-client-ca-file"
			default:
				continue
			}
			listen, _ := flagValue(c.Args, addrFlag)
			_, lport, err := net.SplitHostPort(listen)
			if err != nil {
				t.Errorf("%s: %s --%s=%q: %v", where, pt.where, addrFlag, listen, err)
				continue
			}
			if !portMatches(c, target, lport) {
				t.Errorf("%s: Service %s targets %s, but %s listens on %s", where, svc.Name, target.String(), pt.where, lport)
				continue
			}
			for _, f := range []string{certFlag, caFlag} {
				if v, ok := flagValue(c.Args, f); !ok || !underMount(c, v) {
					t.Errorf("%s: %s: --%s=%q is not a mounted file (KEDA's trigger authenticates with mutual TLS)", where, pt.where, f, v)
				}
			}
			served++
		}
	}
	if served == 0 {
		t.Errorf("%s: no pod behind Service %s/%s serves the KEDA scaler", where, svc.Namespace, svc.Name)
	}
}

// portMatches reports whether the Service's targetPort (a number or a
// container port name) is the container's port lport.
func portMatches(c corev1.Container, target intstr.IntOrString, lport string) bool {
	if target.Type == intstr.Int {
		return strconv.Itoa(int(target.IntVal)) == lport
	}
	for _, p := range c.Ports {
		if p.Name == target.StrVal {
			return strconv.Itoa(int(p.ContainerPort)) == lport
		}
	}
	return false
}
