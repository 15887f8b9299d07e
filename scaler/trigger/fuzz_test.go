package trigger

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/util/validation"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
)

// FuzzParse feeds hostile metadata: "key=value" lines. ParseTrigger
// must never panic, every error must be InvalidArgument, and an accepted
// trigger must be one the server can act on.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		"deploymentName=iris\nmetricName=requests_per_second\ntargetValue=5",
		"labelSelector=app in (a,b),tier!=x\nmetricName=batch_size\ntargetValue=1e3\naggregation=MAX",
		"seldonDeploymentNameFromEnv=sdep\nmetricName=cpu_usage_cores\ntargetValue=0.4\nactivationValue=0x1p-2",
		"namespace=\nserviceName=svc\nmetricName=inflight_requests\ntargetValue=-0",
		"labelSelector=!!!\ntargetValue=NaN\nactivationValue=Inf",
		"deploymentName=a\ndeploymentNameFromEnv=b",
		"deploymentName=iris\nmetricName=requests_per_second\ntargetValue=5\nwakeServiceName=iris-predictor",
		"serviceName=iris\nmetricName=requests_per_second\ntargetValue=5\nwakeServiceNameFromEnv=Iris_Svc",
		"serviceName=iris\nmetricName=requests_per_second\ntargetValue=5\nwakeServiceName=1iris\nwakeServiceNameFromEnv=x",
		"",
	} {
		f.Add(seed, "model")
	}
	served := []string{"requests_per_second", "predicted_rows_per_second", "batch_size",
		"inflight_requests", "request_duration_p99_seconds", "cpu_usage_cores"}
	f.Fuzz(func(t *testing.T, lines, namespace string) {
		md := map[string]string{}
		for _, l := range strings.Split(lines, "\n") {
			k, v, _ := strings.Cut(l, "=")
			md[k] = v
		}
		tr, err := Parse(&pb.ScaledObjectRef{Name: "x", Namespace: namespace, ScalerMetadata: md}, served)
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("error %v is not InvalidArgument", err)
			}
			return
		}
		if tr.Namespace == "" || !(tr.Target > 0) || tr.Activation < 0 || (tr.Selector == nil) == (tr.Name == "") ||
			(tr.WakeService != "" && len(validation.IsDNS1035Label(tr.WakeService)) > 0 && tr.WakeService != tr.Name) {
			t.Fatalf("accepted an unusable trigger %+v from %q", tr, md)
		}
	})
}
