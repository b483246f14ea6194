"""Where `serving.server` behaves as `tensorflow_model_server`, and where it differs on purpose.

Each row names a behaviour, the TensorFlow Serving (or TensorFlow) source
file that settles it, and the test here that checks it. The test below keeps
the table honest: every named test exists and cites that source file.
"""

import ast
import os

HERE = os.path.dirname(os.path.abspath(__file__))

# (behaviour, source in tensorflow/serving or tensorflow, test file, test function)
SAME = [
    ("unknown signature: FAILED_PRECONDITION, HTTP 400", "servables/tensorflow/predict_util.cc",
     "test_server.py", "test_bad_requests_get_a_status_and_the_server_stays_up"),
    ("status codes to HTTP statuses", "model_servers/http_server.cc",
     "test_server.py", "test_bad_requests_get_a_status_and_the_server_stays_up"),
    ("a string tensor in JSON takes strings or b64 objects only", "util/json_tensor.cc",
     "test_server.py", "test_bad_requests_get_a_status_and_the_server_stays_up"),
    ("version labels without a label config: Unrecognized servable version label", "model_servers/server_core.cc",
     "test_server.py", "test_bad_requests_get_a_status_and_the_server_stays_up"),
    ("metadata JSON in proto field names, default values printed", "model_servers/http_rest_api_util.cc",
     "test_server.py", "test_rest_api"),
    ("REST routes: case-insensitive, /versions/N, /labels/L, :classify/:regress/:predict",
     "model_servers/http_rest_api_util.cc", "test_server.py", "test_rest_api"),
    ("a path outside the routes: 400 Malformed request", "model_servers/http_rest_api_handler.cc",
     "test_server.py", "test_an_error_reply_closes_the_connection_so_an_unread_body_is_not_a_request"),
    (":classify on a predict signature: Expected classification signature method_name",
     "servables/tensorflow/classifier.cc", "test_server.py", "test_rest_api"),
    ("columnar response with one output: the value alone, unnamed", "util/json_tensor.cc",
     "test_server.py", "test_rest_api"),
    ("boolean flags: --flag, --flag=true, --flag=false", "core/util/command_line_flags.cc",
     "test_server.py", "test_bad_requests_batched_with_good_ones_fail_alone"),
    ("a failed version load is retried", "core/loader_harness.cc",
     "test_server.py", "test_versions_follow_the_directory_as_tensorflow_serving_does"),
    ("a model that never loads stops the server at startup", "model_servers/server_core.cc",
     "test_server.py", "test_a_model_that_never_loads_stops_the_server_at_startup"),
    ("JSON values only in the tensor's own type (no 3.9 for an int32)", "util/json_tensor.cc",
     "test_server.py", "test_bad_requests_get_a_status_and_the_server_stays_up"),
    ("a task over max_batch_size: INVALID_ARGUMENT, Task size N is larger than maximum input batch size M",
     "batching_util/shared_batch_scheduler.h", "test_batching.py",
     "test_a_task_over_max_batch_size_is_refused_as_tensorflow_serving_does"),
    ("pad_variable_length_inputs pads with the tensor's first element", "batching/batching_util.cc",
     "test_batching.py", "test_variable_length_inputs_are_padded_with_each_tensors_first_value"),
    ("allowed_batch_sizes pad with the last task's first row", "batching/batching_session.cc",
     "test_batching.py", "test_allowed_batch_sizes_pad_with_the_last_tasks_first_row"),
    ("row answers need outputs of rank >= 1 and one batch size, else INVALID_ARGUMENT", "util/json_tensor.cc",
     "test_lifecycle.py", "test_row_answers_from_outputs_without_one_batch_size_are_invalid_argument"),
    ("--ssl_config_file read by protobuf's text-format parser: a malformed line fails the start",
     "model_servers/server.cc", "test_tls.py", "test_malformed_ssl_config_lines_fail_naming_the_fault"),
    ("--batching_parameters_file read by protobuf's text-format parser (wrapped values, no repeats)",
     "servables/tensorflow/session_bundle_config.proto", "test_batching.py",
     "test_malformed_batching_parameters_are_refused_naming_the_fault"),
]

# Deliberate differences: TensorFlow Serving's behaviour would let one request harm others.
DIFFERENT = [
    ("without padding, inputs of other widths go to other batches (TF Serving: FAILED_PRECONDITION for all)",
     "batching/batching_session.cc", "test_batching.py",
     "test_without_padding_inputs_of_other_widths_go_to_other_batches"),
    ("a batch failing on a request's content is bisected, so only the bad requests fail",
     "", "test_batching.py", "test_a_bad_request_fails_alone_in_its_batch"),
    ("a TensorProto that declares far more elements than it carries is refused (TF fills it)",
     "", "test_fuzz.py", "test_fuzzed_requests_get_client_errors_and_the_server_stays_up"),
    ("client_verify without custom_ca is refused at start (TF Serving passes the empty CA on to gRPC)",
     "model_servers/server.cc", "test_tls.py", "test_client_verify_without_a_custom_ca_is_refused_clearly"),
]


def _functions(test_file):
    with open(os.path.join(HERE, test_file), encoding="utf-8") as f:
        source = f.read()
    tree = ast.parse(source)
    return {node.name: ast.get_source_segment(source, node) for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_every_row_names_a_test_that_cites_its_source():
    for behaviour, source, test_file, test_name in SAME + DIFFERENT:
        functions = _functions(test_file)
        assert test_name in functions, (behaviour, test_file, test_name)
        if source:
            assert source in functions[test_name], (behaviour, test_name, source)
