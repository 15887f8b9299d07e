package trigger

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
)

func TestWakeServiceName(t *testing.T) {
	served := []string{"requests_per_second"}
	tests := []struct {
		name    string
		md      map[string]string
		want    string // Trigger.WakeService
		wantErr string // substring of an InvalidArgument message
	}{
		{name: "none for a deployment", md: map[string]string{KeyDeploymentName: "iris"}},
		{name: "none for a selector", md: map[string]string{KeyLabelSelector: "app=iris"}},
		{name: "defaults to serviceName", md: map[string]string{KeyServiceName: "iris"}, want: "iris"},
		{name: "given for a deployment", md: map[string]string{KeyDeploymentName: "iris", KeyWakeServiceName: "iris-predictor"}, want: "iris-predictor"},
		{name: "overrides serviceName", md: map[string]string{KeyServiceName: "iris-pods", KeyWakeServiceName: "iris"}, want: "iris"},
		{name: "trimmed", md: map[string]string{KeySeldonDeploymentName: "sdep", KeyWakeServiceName: "  iris "}, want: "iris"},
		{name: "from env", md: map[string]string{KeyDeploymentName: "iris", KeyWakeServiceName + "FromEnv": "iris-svc"}, want: "iris-svc"},
		{name: "blank falls back to serviceName", md: map[string]string{KeyServiceName: "iris", KeyWakeServiceName: " "}, want: "iris"},
		{name: "upper case", md: map[string]string{KeyDeploymentName: "iris", KeyWakeServiceName: "Iris"}, wantErr: `wakeServiceName: "Iris" is not a Service name`},
		{name: "starts with a digit", md: map[string]string{KeyDeploymentName: "iris", KeyWakeServiceName: "1iris"}, wantErr: `wakeServiceName: "1iris" is not a Service name`},
		{name: "namespaced", md: map[string]string{KeyDeploymentName: "iris", KeyWakeServiceName: "model/iris"}, wantErr: "wakeServiceName"},
		{name: "too long", md: map[string]string{KeyDeploymentName: "iris", KeyWakeServiceName: strings.Repeat("a", 64)}, wantErr: "wakeServiceName"},
		{name: "plain and from env", md: map[string]string{KeyDeploymentName: "iris", KeyWakeServiceName: "a", KeyWakeServiceName + "FromEnv": "b"}, wantErr: "wakeServiceName and wakeServiceNameFromEnv are mutually exclusive"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			md := map[string]string{KeyMetricName: "requests_per_second", KeyTargetValue: "5"}
			for k, v := range tc.md {
				md[k] = v
			}
			tr, err := Parse(&pb.ScaledObjectRef{Name: "so", Namespace: "model", ScalerMetadata: md}, served)
			if tc.wantErr != "" {
				st := status.Convert(err)
				if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), tc.wantErr) {
					t.Fatalf("got %v %q, want InvalidArgument containing %q", st.Code(), st.Message(), tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tr.WakeService != tc.want {
				t.Errorf("WakeService = %q, want %q", tr.WakeService, tc.want)
			}
		})
	}
}
